/**
 * The region path: try regions best first, fail over while nothing has been
 * sent to the client, then pass the chosen region's answer through. Decisions
 * come from failover.ts; this file only does the I/O.
 */
import { decide, type AttemptOutcome } from "./failover";
import { ApiError, sseErrorEvent } from "./errors";
import { routeKey, type Route } from "./route";
import { SseWatcher } from "./sse";

/** 429 cooldowns, per route, for this isolate: key → until (ms since epoch). */
export const cooldownUntil = new Map<string, number>();

export interface RegionAttemptLog {
	region: string;
	outcome: string;
}

export interface RegionResult {
	response: Response;
	attempts: number;
	log: RegionAttemptLog[];
}

class ClientGone extends Error {}

const encoder = new TextEncoder();

interface Attempt {
	outcome: AttemptOutcome;
	response?: Response;
	controller: AbortController;
	/** clears the attempt's timer and stops watching the client */
	done: () => void;
	timedOut: () => boolean;
	/** called once the client disconnects, after the upstream fetch is aborted */
	onClientGone?: () => void;
}

/**
 * One upstream fetch, bounded by firstByteTimeoutMs (until response headers)
 * and requestTimeoutMs (the whole attempt, body included). One timer at a
 * time stands for both: the first-byte timer, once headers are in, re-arms
 * itself for what is left of the total, so a stream that ends before
 * firstByteTimeoutMs sets and clears one timer.
 */
async function attempt(route: Route, body: Uint8Array, clientSignal: AbortSignal | undefined): Promise<Attempt> {
	const controller = new AbortController();
	const { firstByteTimeoutMs, requestTimeoutMs } = route.routing;
	const started = Date.now();
	let headersIn = false;
	let firstByteFired = false;
	let totalFired = false;
	let a: Attempt | null = null;
	const onClientAbort = () => {
		controller.abort(new ClientGone("client disconnected"));
		a?.onClientGone?.();
	};
	clientSignal?.addEventListener("abort", onClientAbort);
	const fireTotal = () => {
		totalFired = true;
		controller.abort(new Error("request timeout"));
	};
	const fireFirstByte = () => {
		if (headersIn) {
			const left = requestTimeoutMs - (Date.now() - started);
			if (left > 0) timer = setTimeout(fireTotal, left);
			else fireTotal();
			return;
		}
		firstByteFired = true;
		controller.abort(new Error("first byte timeout"));
	};
	let timer = firstByteTimeoutMs < requestTimeoutMs ? setTimeout(fireFirstByte, firstByteTimeoutMs) : setTimeout(fireTotal, requestTimeoutMs);
	const done = () => {
		clearTimeout(timer);
		clientSignal?.removeEventListener("abort", onClientAbort);
	};
	const base = { controller, done, timedOut: () => totalFired };
	try {
		const response = await fetch(`${route.endpoint}/v1/chat/completions`, {
			method: "POST",
			headers: { "content-type": "application/json", accept: "application/json, text/event-stream" },
			body,
			signal: controller.signal,
		});
		headersIn = true;
		a = { ...base, response, outcome: { kind: "response", status: response.status, retryAfter: response.headers.get("retry-after") } };
		return a;
	} catch (err) {
		done();
		if (clientSignal?.aborted) throw new ClientGone("client disconnected");
		if (firstByteFired || totalFired) return { ...base, outcome: { kind: "first-byte-timeout" } };
		return { ...base, outcome: { kind: "connect-error" } };
	}
}

/**
 * Sends the request to `routes` in order, at most `maxAttempts` of them.
 * Returns the response to give the client; throws ApiError when every
 * attempt failed (429 when they were all saturated, else 503).
 */
export async function forwardToRegions(opts: {
	routes: readonly Route[];
	body: Uint8Array;
	stream: boolean;
	maxAttempts: number;
	clientSignal?: AbortSignal;
	ctx: ExecutionContext;
	nowMs?: () => number;
}): Promise<RegionResult> {
	const now = opts.nowMs ?? Date.now;
	const log: RegionAttemptLog[] = [];
	const tried = opts.routes.slice(0, Math.max(1, opts.maxAttempts));
	let saturated = 0;
	let shortestCooldownMs = Infinity;
	for (const route of tried) {
		let a: Attempt;
		try {
			a = await attempt(route, opts.body, opts.clientSignal);
		} catch (err) {
			if (err instanceof ClientGone) throw new ApiError(499, "invalid_request_error", "client_closed_request", "Client closed the request.");
			throw err;
		}
		const decision = decide(a.outcome, now());
		if (decision.action === "next") {
			a.done();
			// A Worker has six outbound connections: never leave a body unread and open.
			await a.response?.body?.cancel().catch(() => {});
			if (decision.cooldownMs > 0) {
				cooldownUntil.set(routeKey(route), now() + decision.cooldownMs);
				saturated++;
				shortestCooldownMs = Math.min(shortestCooldownMs, decision.cooldownMs);
			}
			log.push({ region: route.region, outcome: decision.reason });
			continue;
		}
		const upstream = a.response!;
		const attempts = log.length + 1;
		const ok = upstream.status >= 200 && upstream.status < 300;
		if (!opts.stream || !ok) {
			// Whole-body answers are read here, so a body that breaks off
			// still fails over: nothing has reached the client yet.
			let text: string;
			try {
				text = await upstream.text();
			} catch {
				a.done();
				if (opts.clientSignal?.aborted) throw new ApiError(499, "invalid_request_error", "client_closed_request", "Client closed the request.");
				log.push({ region: route.region, outcome: a.timedOut() ? "request timeout" : "body failed" });
				continue;
			}
			a.done();
			log.push({ region: route.region, outcome: `upstream ${upstream.status}` });
			return {
				response: new Response(text, {
					status: upstream.status,
					headers: { "content-type": upstream.headers.get("content-type") ?? "application/json" },
				}),
				attempts,
				log,
			};
		}
		// Hold the headers until the first chunk: a region that answers 200 and
		// then breaks before sending anything can still be failed over.
		const reader = upstream.body!.getReader();
		let first: ReadableStreamReadResult<Uint8Array>;
		try {
			first = await reader.read();
		} catch {
			first = { done: true, value: undefined };
		}
		if (first.done) {
			a.done();
			await reader.cancel().catch(() => {});
			if (opts.clientSignal?.aborted) throw new ApiError(499, "invalid_request_error", "client_closed_request", "Client closed the request.");
			log.push({ region: route.region, outcome: a.timedOut() ? "request timeout before the first chunk" : "stream ended before the first chunk" });
			continue;
		}
		const watcher = new SseWatcher();
		watcher.push(first.value);
		if (watcher.sawError) {
			// The region failed before generating anything: nothing has reached the client yet.
			a.done();
			await reader.cancel().catch(() => {});
			log.push({ region: route.region, outcome: "error event before the first token" });
			continue;
		}
		log.push({ region: route.region, outcome: `upstream ${upstream.status} streaming` });
		return { response: passThroughStream(upstream, reader, first.value, watcher, a, opts.ctx, opts.clientSignal), attempts, log };
	}
	const detail = log.map((l) => `${l.region}: ${l.outcome}`).join("; ");
	if (saturated > 0 && saturated === log.length) {
		const retryAfter = String(Math.max(1, Math.ceil(shortestCooldownMs / 1000)));
		throw new ApiError(429, "rate_limit_error", "regions_saturated", `Every region serving this model is saturated (${detail}).`, null, {
			"retry-after": retryAfter,
		});
	}
	throw new ApiError(503, "service_unavailable", "regions_failed", `No region could serve the request after ${log.length} attempt(s) (${detail}).`);
}

/**
 * Streams the upstream SSE body to the client chunk by chunk. When the
 * upstream breaks (read error, total timeout, or end without `data: [DONE]`)
 * the client gets an OpenAI-style error event and `data: [DONE]`. When the
 * client goes away the upstream read is cancelled and the fetch aborted.
 *
 * The client side is an IdentityTransformStream: workerd reads it natively,
 * so each chunk costs one read and one write here and no JavaScript stream
 * machinery on the way out. Chunks are watched (sse.ts, on the bytes, no
 * decoding) only until `data: [DONE]`: after it nothing can change what the
 * stream ends with.
 */
function passThroughStream(
	upstream: Response,
	reader: ReadableStreamDefaultReader<Uint8Array>,
	firstChunk: Uint8Array,
	/** has seen the first chunk */
	watcher: SseWatcher,
	a: Attempt,
	ctx: ExecutionContext,
	clientSignal?: AbortSignal,
): Response {
	const { readable, writable } = new IdentityTransformStream();
	const writer = writable.getWriter();
	const pump = async () => {
		let clientGone = false;
		const stopUpstream = async (reason: string) => {
			await reader.cancel(reason).catch(() => {});
			a.controller.abort(new Error(reason));
		};
		// The attempt already watches the client (and aborts the fetch): hook in.
		a.onClientGone = () => {
			clientGone = true;
			void stopUpstream("client disconnected");
		};
		if (clientSignal?.aborted) a.onClientGone();
		try {
			let chunk: Uint8Array = firstChunk;
			for (;;) {
				try {
					await writer.write(chunk);
				} catch {
					clientGone = true;
					await stopUpstream("client disconnected");
					return;
				}
				let next: ReadableStreamReadResult<Uint8Array>;
				try {
					next = await reader.read();
				} catch (err) {
					if (clientGone) return;
					const why = a.timedOut() ? "the region exceeded requestTimeoutMs" : `the region's stream failed (${String(err)})`;
					await writer.write(encoder.encode(sseErrorEvent(`Upstream failed mid-stream: ${why}.`, "upstream_stream_failed")));
					break;
				}
				if (next.done) {
					// A region that reported its own error event already told the client.
					if (!watcher.sawDone && !watcher.sawError) {
						await writer.write(
							encoder.encode(sseErrorEvent("Upstream failed mid-stream: the region closed the stream before data: [DONE].", "upstream_stream_truncated")),
						);
					}
					break;
				}
				chunk = next.value;
				if (!watcher.sawDone) watcher.push(chunk);
			}
			await writer.close();
		} catch {
			// The client went away while the error event was being written.
			await stopUpstream("client disconnected");
		} finally {
			a.done();
		}
	};
	ctx.waitUntil(pump());
	return new Response(readable, {
		status: upstream.status,
		headers: {
			"content-type": upstream.headers.get("content-type") ?? "text/event-stream",
			"cache-control": "no-cache",
		},
	});
}

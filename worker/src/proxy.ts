/**
 * The region path: try regions best first, fail over while nothing has been
 * sent to the client, then pass the chosen region's answer through. Decisions
 * come from failover.ts; this file only does the I/O.
 */
import { decide, type AttemptOutcome } from "./failover";
import { ApiError, sseErrorEvent } from "./errors";
import { routeKey, type Route } from "./route";

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

const DONE_EVENT = /(^|\n)data:\s*\[DONE\]/;
const ERROR_EVENT = /(^|\n)data:\s*\{\s*"error"\s*:/;

interface Attempt {
	outcome: AttemptOutcome;
	response?: Response;
	controller: AbortController;
	/** clears the whole-attempt timer */
	done: () => void;
	timedOut: () => boolean;
}

async function attempt(route: Route, body: Uint8Array, clientSignal: AbortSignal | undefined): Promise<Attempt> {
	const controller = new AbortController();
	let firstByteFired = false;
	let totalFired = false;
	const onClientAbort = () => controller.abort(new ClientGone("client disconnected"));
	clientSignal?.addEventListener("abort", onClientAbort);
	const firstByte = setTimeout(() => {
		firstByteFired = true;
		controller.abort(new Error("first byte timeout"));
	}, route.routing.firstByteTimeoutMs);
	const total = setTimeout(() => {
		totalFired = true;
		controller.abort(new Error("request timeout"));
	}, route.routing.requestTimeoutMs);
	const done = () => {
		clearTimeout(firstByte);
		clearTimeout(total);
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
		clearTimeout(firstByte);
		return { ...base, response, outcome: { kind: "response", status: response.status, retryAfter: response.headers.get("retry-after") } };
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
		if (ERROR_EVENT.test(new TextDecoder().decode(first.value))) {
			// The region failed before generating anything: nothing has reached the client yet.
			a.done();
			await reader.cancel().catch(() => {});
			log.push({ region: route.region, outcome: "error event before the first token" });
			continue;
		}
		log.push({ region: route.region, outcome: `upstream ${upstream.status} streaming` });
		return { response: passThroughStream(upstream, reader, first.value, a, opts.ctx, opts.clientSignal), attempts, log };
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
 */
function passThroughStream(
	upstream: Response,
	reader: ReadableStreamDefaultReader<Uint8Array>,
	firstChunk: Uint8Array,
	a: Attempt,
	ctx: ExecutionContext,
	clientSignal?: AbortSignal,
): Response {
	const { readable, writable } = new TransformStream<Uint8Array, Uint8Array>();
	const writer = writable.getWriter();
	const enc = new TextEncoder();
	const dec = new TextDecoder();
	let tail = "";
	let sawDone = false;
	let sawUpstreamError = false;

	const pump = async () => {
		let clientGone = false;
		const stopUpstream = async (reason: string) => {
			await reader.cancel(reason).catch(() => {});
			a.controller.abort(new Error(reason));
		};
		clientSignal?.addEventListener("abort", () => {
			clientGone = true;
			void stopUpstream("client disconnected");
		});
		try {
			let pending: Uint8Array | null = firstChunk;
			for (;;) {
				let chunk: ReadableStreamReadResult<Uint8Array>;
				try {
					if (pending) {
						chunk = { done: false, value: pending };
						pending = null;
					} else chunk = await reader.read();
				} catch (err) {
					if (clientGone) return;
					const why = a.timedOut() ? "the region exceeded requestTimeoutMs" : `the region's stream failed (${String(err)})`;
					await writer.write(enc.encode(sseErrorEvent(`Upstream failed mid-stream: ${why}.`, "upstream_stream_failed")));
					break;
				}
				if (chunk.done) {
					// A region that reported its own error event already told the client.
					if (!sawDone && !sawUpstreamError) {
						await writer.write(
							enc.encode(sseErrorEvent("Upstream failed mid-stream: the region closed the stream before data: [DONE].", "upstream_stream_truncated")),
						);
					}
					break;
				}
				const seen = tail + dec.decode(chunk.value, { stream: true });
				if (DONE_EVENT.test(seen)) sawDone = true;
				if (ERROR_EVENT.test(seen)) sawUpstreamError = true;
				tail = seen.slice(-64);
				try {
					await writer.write(chunk.value);
				} catch {
					clientGone = true;
					await stopUpstream("client disconnected");
					return;
				}
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

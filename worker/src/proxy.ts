/**
 * The region path: try regions best first, fail over while nothing has been
 * sent to the client, then pass the chosen region's answer through. Decisions
 * come from failover.ts; this file only does the I/O.
 *
 * The Worker authenticates to each region with that route's own
 * `upstreamToken` (Authorization: Bearer), plus the Cloudflare Access service
 * token when one is configured; nothing of the client's request but its body
 * is forwarded. A region's answer is trusted no further than needed:
 * redirects are not followed, a non-streamed or error body is read up to
 * maxUpstreamBodyBytes and no further, a 2xx must be JSON (or SSE when
 * streaming), the client-facing content-type is the Worker's own, and none of
 * the region's headers reach the client.
 *
 * Every attempt is recorded in the caller's log (region, outcome, time to
 * response headers) for the access log (access-log.ts).
 */
import { usageOf, type StreamEnd, type Usage } from "./access-log";
import { decide, type AttemptOutcome, type FailureKind } from "./failover";
import { ApiError, sseErrorEvent } from "./errors";
import { readStreamCapped } from "./request";
import { routeKey, type StoredRoute } from "./route";
import { SseWatcher } from "./sse";

/** MAX_UPSTREAM_BODY_BYTES when unset or not a positive integer: 4 MiB. */
export const DEFAULT_MAX_UPSTREAM_BODY_BYTES = 4 * 1024 * 1024;

/** 429 cooldowns, per route, for this isolate: key → until (ms since epoch). */
export const cooldownUntil = new Map<string, number>();

export interface RegionAttemptLog {
	region: string;
	outcome: string;
	/** ms from sending the request to the response headers; null when none came */
	ttfbMs: number | null;
}

/** The OpenAI endpoints the regions serve, as the Worker forwards them. */
export type UpstreamPath = "/v1/chat/completions" | "/v1/completions";

export interface RegionResult {
	response: Response;
	attempts: number;
	log: RegionAttemptLog[];
	/** the answer's token counts, for a non-streamed 2xx that has them */
	usage: Usage | null;
	/** for a relayed stream: resolves when it ends, with how */
	streamEnd: Promise<StreamEnd> | null;
	/** for a region's 4xx passed on: its OpenAI error code (`upstream_rejected_request` when it sent none the Worker passes on) */
	errorCode: string | null;
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
	/** ms until the response headers; null when none came */
	ttfbMs: number | null;
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
async function attempt(
	route: StoredRoute,
	path: UpstreamPath,
	body: Uint8Array,
	clientSignal: AbortSignal | undefined,
	accessHeaders: Record<string, string>,
	traceHeaders: Record<string, string>,
): Promise<Attempt> {
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
	const base = { controller, done, timedOut: () => totalFired, ttfbMs: null };
	try {
		const response = await fetch(`${route.endpoint}${path}`, {
			method: "POST",
			// A fresh header set: never the client's Authorization (its Backhaul
			// API key), cookies or anything else it sent.
			headers: {
				"content-type": "application/json",
				accept: "application/json, text/event-stream",
				...traceHeaders,
				...accessHeaders,
				authorization: `Bearer ${route.upstreamToken}`,
			},
			body,
			signal: controller.signal,
			// A region never sends the Worker, with the region's token, elsewhere: a 3xx is a failed attempt.
			redirect: "manual",
		});
		headersIn = true;
		a = { ...base, ttfbMs: Date.now() - started, response, outcome: { kind: "response", status: response.status, retryAfter: response.headers.get("retry-after") } };
		return a;
	} catch (err) {
		done();
		if (clientSignal?.aborted) throw new ClientGone("client disconnected");
		if (firstByteFired || totalFired) return { ...base, outcome: { kind: "first-byte-timeout" } };
		return { ...base, outcome: { kind: "connect-error" } };
	}
}

/** The media type of a content-type header, lower case, without parameters. */
export function mediaType(contentType: string | null): string {
	return (contentType ?? "").split(";", 1)[0]!.trim().toLowerCase();
}

/** A region's media type as the Worker's messages quote it: at most 64 token characters, nothing else. */
const quotedType = (contentType: string | null): string => mediaType(contentType).slice(0, 64).replace(/[^a-z0-9!#$&^_.+\/-]/g, "?") || "none";

/** application/json or application/*+json (problem+json and the like). */
export function isJsonType(contentType: string | null): boolean {
	const t = mediaType(contentType);
	return t === "application/json" || (t.startsWith("application/") && t.endsWith("+json"));
}

const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: false });

const NOT_JSON = Symbol("not JSON");

/** `bytes` as UTF-8 JSON, or NOT_JSON. */
function parseJson(bytes: Uint8Array): unknown {
	try {
		return JSON.parse(utf8.decode(bytes));
	} catch {
		return NOT_JSON;
	}
}

const isJsonObject = (v: unknown) => typeof v === "object" && v !== null && !Array.isArray(v);

/**
 * Sends the request to `routes` in order, at most `maxAttempts` of them.
 * Returns the response to give the client; throws ApiError when every
 * attempt failed: 429 when they were all saturated, 502 when every region
 * answered with something the Worker does not accept (a redirect, a body
 * over the cap, the wrong content type), else 503.
 */
export async function forwardToRegions(opts: {
	routes: readonly StoredRoute[];
	/** the endpoint asked for, at every region */
	path: UpstreamPath;
	body: Uint8Array;
	stream: boolean;
	maxAttempts: number;
	clientSignal?: AbortSignal;
	ctx: ExecutionContext;
	nowMs?: () => number;
	/** sent on every upstream request (the Cloudflare Access service token, when configured) */
	accessHeaders?: Record<string, string>;
	/** most bytes read from a non-streamed or error response; DEFAULT_MAX_UPSTREAM_BODY_BYTES if absent */
	maxUpstreamBodyBytes?: number;
	/** headers for each attempt (the request id and a traceparent with a new span) */
	traceHeaders?: () => Record<string, string>;
	/** filled with every attempt as it ends; kept by the caller when every attempt fails */
	log?: RegionAttemptLog[];
}): Promise<RegionResult> {
	const now = opts.nowMs ?? Date.now;
	const cap = opts.maxUpstreamBodyBytes ?? DEFAULT_MAX_UPSTREAM_BODY_BYTES;
	const accessHeaders = opts.accessHeaders ?? {};
	const log: RegionAttemptLog[] = opts.log ?? [];
	const tried = opts.routes.slice(0, Math.max(1, opts.maxAttempts));
	let saturated = 0;
	let badResponses = 0;
	let shortestCooldownMs = Infinity;
	const clientGone = () => new ApiError(499, "invalid_request_error", "client_closed_request", "Client closed the request.");
	const failed = (route: StoredRoute, a: Attempt, outcome: string, failure: FailureKind) => {
		if (failure === "bad-response") {
			badResponses++;
			console.warn("region answered with a response the Worker does not accept", { region: route.region, endpoint: route.endpoint, outcome });
		}
		log.push({ region: route.region, outcome, ttfbMs: a.ttfbMs });
	};
	for (const route of tried) {
		let a: Attempt;
		try {
			a = await attempt(route, opts.path, opts.body, opts.clientSignal, accessHeaders, opts.traceHeaders?.() ?? {});
		} catch (err) {
			if (err instanceof ClientGone) throw clientGone();
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
			const status = a.response?.status;
			if (status === 401 || status === 403) {
				// The token's fingerprint (as the admin GET shows it), never the token.
				console.warn("region refused the Worker's credential", {
					region: route.region,
					endpoint: route.endpoint,
					status,
					upstreamTokenSha256: route.upstreamTokenSha256,
					cfAccess: "cf-access-client-id" in accessHeaders,
				});
			}
			failed(route, a, decision.reason, decision.failure);
			continue;
		}
		const upstream = a.response!;
		const attempts = log.length + 1;
		const ok = upstream.status >= 200 && upstream.status < 300;
		const contentType = upstream.headers.get("content-type");
		// A 2xx must be what was asked for: SSE when streaming, else JSON (not,
		// say, an ingress's text/html login page).
		if (ok && !(opts.stream ? mediaType(contentType) === "text/event-stream" : isJsonType(contentType))) {
			a.done();
			await upstream.body?.cancel().catch(() => {});
			failed(route, a, `upstream ${upstream.status} with content-type '${quotedType(contentType)}', not ${opts.stream ? "text/event-stream" : "JSON"}`, "bad-response");
			continue;
		}
		const used = (outcome: string) => log.push({ region: route.region, outcome, ttfbMs: a.ttfbMs });
		if (!opts.stream || !ok) {
			// Whole-body answers are read here, so a body that breaks off
			// still fails over: nothing has reached the client yet. Read up to
			// the cap and no further.
			let bytes: Uint8Array | null;
			try {
				const declared = upstream.headers.get("content-length");
				if (declared !== null && /^\d+$/.test(declared) && Number(declared) > cap) {
					await upstream.body?.cancel().catch(() => {});
					bytes = null;
				} else {
					bytes = upstream.body ? await readStreamCapped(upstream.body, cap) : new Uint8Array(0);
				}
			} catch {
				a.done();
				if (opts.clientSignal?.aborted) throw clientGone();
				failed(route, a, a.timedOut() ? "request timeout" : "body failed", "unavailable");
				continue;
			}
			a.done();
			const json = bytes === null ? NOT_JSON : parseJson(bytes);
			if (ok) {
				if (json === NOT_JSON) {
					failed(route, a, `upstream ${upstream.status} ${bytes === null ? `body over ${cap} bytes` : "body is not JSON"}`, "bad-response");
					continue;
				}
				used(`upstream ${upstream.status}`);
				return {
					response: new Response(bytes, { status: upstream.status, headers: { "content-type": "application/json" } }),
					attempts,
					log,
					usage: usageOf(json),
					streamEnd: null,
					errorCode: null,
				};
			}
			// A 4xx that is the client's (400 context too long, 404 model): its
			// OpenAI error passes through when it is one, else the Worker says so itself.
			used(`upstream ${upstream.status}`);
			const passed = bytes !== null && isJsonType(contentType) && isJsonObject(json);
			const response = passed
				? new Response(bytes, { status: upstream.status, headers: { "content-type": "application/json" } })
				: new ApiError(
						upstream.status,
						"invalid_request_error",
						"upstream_rejected_request",
						`The region rejected the request with status ${upstream.status} (${bytes === null ? `its answer was over ${cap} bytes` : `its answer was not a JSON error but '${quotedType(contentType)}'`}).`,
					).toResponse();
			const code = passed ? (json as { error?: { code?: unknown } }).error?.code : undefined;
			return { response, attempts, log, usage: null, streamEnd: null, errorCode: passed ? (typeof code === "string" ? code : null) : "upstream_rejected_request" };
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
			if (opts.clientSignal?.aborted) throw clientGone();
			failed(route, a, a.timedOut() ? "request timeout before the first chunk" : "stream ended before the first chunk", "unavailable");
			continue;
		}
		const watcher = new SseWatcher();
		watcher.push(first.value);
		if (watcher.sawError) {
			// The region failed before generating anything: nothing has reached the client yet.
			a.done();
			await reader.cancel().catch(() => {});
			failed(route, a, "error event before the first token", "unavailable");
			continue;
		}
		used(`upstream ${upstream.status} streaming`);
		const { response, streamEnd } = passThroughStream(upstream, reader, first.value, watcher, a, opts.ctx, opts.clientSignal);
		return { response, attempts, log, usage: null, streamEnd, errorCode: null };
	}
	const detail = log.map((l) => `${l.region}: ${l.outcome}`).join("; ");
	if (saturated > 0 && saturated === log.length) {
		const retryAfter = String(Math.max(1, Math.ceil(shortestCooldownMs / 1000)));
		throw new ApiError(429, "rate_limit_error", "regions_saturated", `Every region serving this model is saturated (${detail}).`, null, {
			"retry-after": retryAfter,
		});
	}
	if (badResponses > 0 && badResponses === log.length) {
		throw new ApiError(502, "server_error", "bad_upstream_response", `Every region tried answered with a response the Worker does not accept (${detail}).`);
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
): { response: Response; streamEnd: Promise<StreamEnd> } {
	const { readable, writable } = new IdentityTransformStream();
	const writer = writable.getWriter();
	const pump = async (): Promise<StreamEnd> => {
		let clientGone = false;
		let end: StreamEnd = "done";
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
					return "client-gone";
				}
				let next: ReadableStreamReadResult<Uint8Array>;
				try {
					next = await reader.read();
				} catch (err) {
					if (clientGone) return "client-gone";
					end = "failed";
					const why = a.timedOut() ? "the region exceeded requestTimeoutMs" : `the region's stream failed (${String(err)})`;
					await writer.write(encoder.encode(sseErrorEvent(`Upstream failed mid-stream: ${why}.`, "upstream_stream_failed")));
					break;
				}
				if (next.done) {
					// A region that reported its own error event already told the client.
					if (watcher.sawError && !watcher.sawDone) end = "region-error";
					else if (!watcher.sawDone) {
						end = "truncated";
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
			return clientGone ? "client-gone" : end;
		} catch {
			// The client went away while the error event was being written.
			await stopUpstream("client disconnected");
			return "client-gone";
		} finally {
			a.done();
		}
	};
	const streamEnd = pump();
	ctx.waitUntil(streamEnd);
	return {
		response: new Response(readable, { status: upstream.status, headers: { "content-type": "text/event-stream", "cache-control": "no-cache" } }),
		streamEnd,
	};
}

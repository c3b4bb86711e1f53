/**
 * The access log: one JSON object per /v1/* request, written with
 * console.log as one line (Workers Logs and `wrangler tail` ingest it as a
 * structured event), and the same record as one Analytics Engine data point
 * where that binding is bound (analytics.ts). Pure: the handler fills an AccessInfo as it goes and
 * the record is built from it once the answer (or, for a relayed stream, the
 * stream) is over.
 *
 * Never in it: the client's key (only the first 16 hex digits of its
 * SHA-256), a region's token, a prompt or an answer.
 */
import type { Tier } from "./classify";
import type { RegionAttemptLog } from "./proxy";
import type { TraceContext } from "./trace";

export interface Usage {
	prompt_tokens: number;
	completion_tokens: number;
	total_tokens: number;
}

/** How a stream relayed from a region ended. */
export type StreamEnd =
	/** `data: [DONE]` */
	| "done"
	/** the region's own error event */
	| "region-error"
	/** the region closed the stream without [DONE] (the client got an error event) */
	| "truncated"
	/** the region's stream broke or timed out (the client got an error event) */
	| "failed"
	/** the client went away */
	| "client-gone";

/**
 * The response cache (issue 18): `hit` answered from it, `miss` cacheable and
 * generated (by this request or, coalesced, by an identical one in flight),
 * `bypass` the client sent x-backhaul-skip-cache, `none` not cacheable.
 */
export type CacheStatus = "hit" | "miss" | "bypass" | "none";

/** What the handler learned about one request, filled in as it goes. */
export interface AccessInfo {
	/** SHA-256 hex of the client's key, first 16 digits; null when anonymous or not authenticated */
	keyHash: string | null;
	model: string | null;
	stream: boolean;
	tier: Tier | null;
	/** the classification's reason */
	reason: string | null;
	/** every upstream tried, the edge (region "edge") included, in order */
	attempts: RegionAttemptLog[];
	usage: Usage | null;
	/** set when a region's stream is relayed: resolves when it ends */
	streamEnd: Promise<StreamEnd> | null;
	cache: CacheStatus;
	/** answered by an identical request's generation already in flight (coalesce.ts) */
	coalesced: boolean;
	/** the OpenAI error `code` of a non-2xx answer: the Worker's own, or a region's passed on */
	errorCode: string | null;
}

export const newAccessInfo = (): AccessInfo => ({
	keyHash: null,
	model: null,
	stream: false,
	tier: null,
	reason: null,
	attempts: [],
	usage: null,
	streamEnd: null,
	cache: "none",
	coalesced: false,
	errorCode: null,
});

/** OpenAI `usage` from a completion object, when it has three token counts. */
export function usageOf(completion: unknown): Usage | null {
	const u = (completion as { usage?: Record<string, unknown> } | null)?.usage;
	if (typeof u !== "object" || u === null) return null;
	const { prompt_tokens: p, completion_tokens: c } = u;
	if (typeof p !== "number" || typeof c !== "number") return null;
	return { prompt_tokens: p, completion_tokens: c, total_tokens: typeof u.total_tokens === "number" ? u.total_tokens : p + c };
}

export interface AccessRecord {
	event: "access";
	request_id: string;
	trace_id: string;
	method: string;
	path: string;
	status: number;
	key_id_hash: string | null;
	model: string | null;
	stream: boolean;
	tier: Tier | null;
	reason: string | null;
	attempts: { region: string; outcome: string; ttfb_ms: number | null }[];
	usage: Usage | null;
	cache: CacheStatus;
	/** shared an identical request's generation (coalesce.ts) */
	coalesced: boolean;
	/** for a relayed stream, how it ended; else null */
	stream_end: StreamEnd | null;
	/** the OpenAI error code of a non-2xx answer (the Worker's, or the region's it passed on); else null */
	error_code: string | null;
	/** ms from the request's arrival to the answer's headers (a stream's first chunk in hand) */
	ttfb_ms: number;
	/** ms from the request's arrival to the answer's end (a relayed stream's end) */
	duration_ms: number;
}

export function accessRecord(r: {
	trace: TraceContext;
	method: string;
	path: string;
	status: number;
	info: AccessInfo;
	streamEnd: StreamEnd | null;
	ttfbMs: number;
	durationMs: number;
}): AccessRecord {
	const { info } = r;
	return {
		event: "access",
		request_id: r.trace.requestId,
		trace_id: r.trace.traceId,
		method: r.method,
		path: r.path,
		status: r.status,
		key_id_hash: info.keyHash,
		model: info.model,
		stream: info.stream,
		tier: info.tier,
		reason: info.reason,
		attempts: info.attempts.map((a) => ({ region: a.region, outcome: a.outcome, ttfb_ms: a.ttfbMs })),
		usage: info.usage,
		cache: info.cache,
		coalesced: info.coalesced,
		stream_end: r.streamEnd,
		error_code: info.errorCode,
		ttfb_ms: r.ttfbMs,
		duration_ms: r.durationMs,
	};
}

/**
 * Workers Analytics Engine: one data point per /v1/* request, built from the
 * access log's record (access-log.ts), written where the `ANALYTICS` dataset
 * binding is bound; unbound, nothing is written. Pure apart from the write,
 * which never fails a request: an error is logged and the answer goes on.
 *
 * Analytics Engine columns are positional (index1, blob1..blob20,
 * double1..double20), so the order below is the dataset's schema; add new
 * fields at the end. Its limits (developers.cloudflare.com/analytics/
 * analytics-engine/limits): at most 20 blobs, 20 doubles and one index per
 * data point, blobs at most 16 KB together, an index at most 96 bytes.
 * Every blob here is cut to BLOB_BYTES (a model name is the client's and
 * may be long), so the total stays far below the limit.
 */
import type { AccessRecord } from "./access-log";

/** The most UTF-8 bytes of one blob (a longer value is cut at a character boundary). */
export const BLOB_BYTES = 256;
/** Analytics Engine's limit on an index. */
export const INDEX_BYTES = 96;
/** Analytics Engine's limits on one data point's blobs. */
export const MAX_BLOBS = 20;
export const MAX_BLOB_TOTAL_BYTES = 16 * 1024;

/** blob1..blob9, in order. */
export const BLOB_NAMES = ["model", "tier", "region", "status_class", "cache", "error_code", "path", "stream_end", "reason"] as const;
/** double1..double6, in order. */
export const DOUBLE_NAMES = ["status", "duration_ms", "ttfb_ms", "attempts", "prompt_tokens", "completion_tokens"] as const;

/**
 * The data point of one request:
 * - index1: the client key's hash (16 hex digits of its SHA-256, as in the
 *   access log), `anonymous` without one: Analytics Engine samples per index,
 *   so each key keeps its share of the samples.
 * - blobs (BLOB_NAMES): the model (empty when none); the tier that answered,
 *   `cache` for a hit, empty when none did (refused before routing); the
 *   region of the last upstream tried (`edge` for Workers AI; empty when none
 *   was); the status class (`2xx`, `4xx`, `5xx`); the cache status (`hit`,
 *   `miss`, `bypass`, `none`); the OpenAI error code of a non-2xx answer;
 *   the path; how a relayed stream ended; the classification's reason.
 * - doubles (DOUBLE_NAMES): the status; ms to the answer's end and to its
 *   headers; upstreams tried (the edge included); prompt and completion
 *   tokens (0 where unknown: a stream relayed from a region).
 */
export function dataPoint(r: AccessRecord): AnalyticsEngineDataPoint {
	const blobs = [
		r.model ?? "",
		r.cache === "hit" ? "cache" : (r.tier ?? ""),
		r.attempts.at(-1)?.region ?? "",
		`${Math.floor(r.status / 100)}xx`,
		r.cache,
		r.error_code ?? "",
		r.path,
		r.stream_end ?? "",
		r.reason ?? "",
	];
	return {
		indexes: [truncateUtf8(r.key_id_hash ?? "anonymous", INDEX_BYTES)],
		blobs: blobs.map((b) => truncateUtf8(b, BLOB_BYTES)),
		doubles: [r.status, r.duration_ms, r.ttfb_ms, r.attempts.length, r.usage?.prompt_tokens ?? 0, r.usage?.completion_tokens ?? 0],
	};
}

/** Writes the record's data point when `dataset` is bound; never throws. */
export function writeDataPoint(dataset: AnalyticsEngineDataset | undefined, record: AccessRecord): void {
	if (!dataset) return;
	try {
		dataset.writeDataPoint(dataPoint(record));
	} catch (err) {
		console.error("analytics data point not written", { request_id: record.request_id, error: String(err) });
	}
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** `s` cut to at most `maxBytes` UTF-8 bytes, never inside a character. */
export function truncateUtf8(s: string, maxBytes: number): string {
	// A UTF-16 code unit is at most 3 UTF-8 bytes.
	if (s.length * 3 <= maxBytes) return s;
	// At least one byte per code unit: the first maxBytes units hold enough.
	let head = s.slice(0, maxBytes);
	// Not half a surrogate pair at the end.
	if (/[\uD800-\uDBFF]$/.test(head)) head = head.slice(0, -1);
	const bytes = encoder.encode(head);
	if (bytes.length <= maxBytes) return head;
	let end = maxBytes;
	// Back to the first byte of the character the cut falls in.
	while (end > 0 && (bytes[end]! & 0xc0) === 0x80) end--;
	return decoder.decode(bytes.subarray(0, end));
}

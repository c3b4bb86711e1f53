import { describe, expect, it, vi } from "vitest";
import { accessRecord, newAccessInfo, type AccessRecord } from "../../src/access-log";
import { BLOB_BYTES, BLOB_NAMES, dataPoint, DOUBLE_NAMES, INDEX_BYTES, MAX_BLOB_TOTAL_BYTES, MAX_BLOBS, truncateUtf8, writeDataPoint } from "../../src/analytics";
import type { TraceContext } from "../../src/trace";

const trace: TraceContext = { requestId: "req-1", clientRequestId: true, traceId: "4bf92f3577b34da6a3ce929d0e0e4736", clientSpanId: null, flags: "01" };
const bytes = (s: string) => new TextEncoder().encode(s).length;
const blobBytes = (p: AnalyticsEngineDataPoint) => (p.blobs ?? []).reduce((n, b) => n + bytes(String(b)), 0);

function record(over: Partial<ReturnType<typeof newAccessInfo>> = {}, rest: Partial<Parameters<typeof accessRecord>[0]> = {}): AccessRecord {
	return accessRecord({ trace, method: "POST", path: "/v1/chat/completions", status: 200, info: { ...newAccessInfo(), ...over }, streamEnd: null, ttfbMs: 30, durationMs: 90, ...rest });
}

describe("the Analytics Engine data point", () => {
	it("is the access record's key hash, labels and figures, in the documented order", () => {
		const r = record({
			keyHash: "0123456789abcdef",
			model: "smollm2-135m",
			tier: "region",
			reason: "prompt-tokens",
			cache: "miss",
			attempts: [
				{ region: "us-east", outcome: "upstream 503", ttfbMs: 12 },
				{ region: "eu-west", outcome: "upstream 200", ttfbMs: 40 },
			],
			usage: { prompt_tokens: 11, completion_tokens: 5, total_tokens: 16 },
		});
		const p = dataPoint(r);
		expect(p.indexes).toEqual(["0123456789abcdef"]);
		expect(Object.fromEntries(BLOB_NAMES.map((n, i) => [n, p.blobs![i]]))).toEqual({
			model: "smollm2-135m",
			tier: "region",
			region: "eu-west",
			status_class: "2xx",
			cache: "miss",
			error_code: "",
			path: "/v1/chat/completions",
			stream_end: "",
			reason: "prompt-tokens",
		});
		expect(Object.fromEntries(DOUBLE_NAMES.map((n, i) => [n, p.doubles![i]]))).toEqual({
			status: 200,
			duration_ms: 90,
			ttfb_ms: 30,
			attempts: 2,
			prompt_tokens: 11,
			completion_tokens: 5,
		});
		expect(p.blobs).toHaveLength(BLOB_NAMES.length);
		expect(p.doubles).toHaveLength(DOUBLE_NAMES.length);
	});

	it("labels a hit `cache`, a refusal before routing with empty tier and region, and an anonymous caller", () => {
		const hit = dataPoint(record({ tier: "edge", cache: "hit", usage: { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 } }));
		expect(hit.blobs!.slice(0, 5)).toEqual(["", "cache", "", "2xx", "hit"]);
		expect(hit.indexes).toEqual(["anonymous"]);
		const refused = dataPoint(record({ model: "m", errorCode: "unsupported_content_part" }, { status: 400 }));
		expect(refused.blobs!.slice(0, 6)).toEqual(["m", "", "", "4xx", "none", "unsupported_content_part"]);
		// Unknown usage (a relayed region stream) counts as 0 tokens.
		expect(refused.doubles!.slice(3)).toEqual([0, 0, 0]);
		const stream = dataPoint(record({ tier: "region", attempts: [{ region: "r", outcome: "upstream 200 streaming", ttfbMs: 5 }] }, { streamEnd: "truncated" }));
		expect(stream.blobs![BLOB_NAMES.indexOf("stream_end")]).toBe("truncated");
	});

	it("stays within Analytics Engine's limits whatever the client sent", () => {
		expect(BLOB_NAMES.length).toBeLessThanOrEqual(MAX_BLOBS);
		expect(DOUBLE_NAMES.length).toBeLessThanOrEqual(20);
		expect(BLOB_NAMES.length * BLOB_BYTES).toBeLessThanOrEqual(MAX_BLOB_TOTAL_BYTES);
		// A model name is the client's: up to MAX_BODY_BYTES of multi-byte text.
		for (const model of ["é".repeat(100_000), "😀".repeat(50_000), "x".repeat(1_000_000), "a" + "€".repeat(400)]) {
			const p = dataPoint(record({ model, keyHash: "k".repeat(500), errorCode: "c".repeat(10_000), reason: model }));
			expect(p.blobs!.length).toBeLessThanOrEqual(MAX_BLOBS);
			expect(blobBytes(p)).toBeLessThanOrEqual(MAX_BLOB_TOTAL_BYTES);
			for (const b of p.blobs!) expect(bytes(String(b))).toBeLessThanOrEqual(BLOB_BYTES);
			expect(p.indexes).toHaveLength(1);
			expect(bytes(String(p.indexes![0]))).toBe(INDEX_BYTES);
			// Cut at a character, never inside one.
			expect(String(p.blobs![0])).not.toContain("\uFFFD");
			expect(model.startsWith(String(p.blobs![0]))).toBe(true);
		}
	});
});

describe("truncateUtf8", () => {
	it("keeps what fits and cuts the rest at a character boundary", () => {
		expect(truncateUtf8("", 4)).toBe("");
		expect(truncateUtf8("abcd", 4)).toBe("abcd");
		expect(truncateUtf8("abcde", 4)).toBe("abcd");
		// é is 2 bytes, € 3, 😀 4 (a surrogate pair)
		expect(truncateUtf8("éé", 4)).toBe("éé");
		expect(truncateUtf8("ééé", 5)).toBe("éé");
		expect(truncateUtf8("a€€", 6)).toBe("a€");
		expect(truncateUtf8("a€€", 7)).toBe("a€€");
		expect(truncateUtf8("😀😀", 7)).toBe("😀");
		expect(truncateUtf8("😀😀", 3)).toBe("");
		expect(truncateUtf8("ab😀", 3)).toBe("ab");
	});
});

describe("writeDataPoint", () => {
	it("writes one data point when bound, nothing when not, and never throws", () => {
		const written: AnalyticsEngineDataPoint[] = [];
		writeDataPoint({ writeDataPoint: (p) => void written.push(p!) }, record());
		expect(written).toHaveLength(1);
		writeDataPoint(undefined, record());
		const error = vi.spyOn(console, "error").mockImplementation(() => {});
		expect(() =>
			writeDataPoint(
				{
					writeDataPoint: () => {
						throw new Error("dataset unavailable");
					},
				},
				record(),
			),
		).not.toThrow();
		expect(error).toHaveBeenCalledWith("analytics data point not written", { request_id: "req-1", error: "Error: dataset unavailable" });
		error.mockRestore();
	});
});

import { describe, expect, it } from "vitest";
import { accessRecord, newAccessInfo, usageOf } from "../../src/access-log";
import type { TraceContext } from "../../src/trace";

const trace: TraceContext = { requestId: "req-1", clientRequestId: true, traceId: "4bf92f3577b34da6a3ce929d0e0e4736", clientSpanId: null, flags: "01" };

describe("access log record", () => {
	it("carries the request, the key's hash, the routing, every attempt, the status and the usage", () => {
		const info = {
			...newAccessInfo(),
			keyHash: "0123456789abcdef",
			model: "smollm2-135m",
			stream: true,
			tier: "region" as const,
			reason: "no-edge-model",
			attempts: [
				{ region: "us-east", outcome: "upstream 503", ttfbMs: 12 },
				{ region: "eu-west", outcome: "connection failed", ttfbMs: null },
				{ region: "ap-south", outcome: "upstream 200 streaming", ttfbMs: 40 },
			],
		};
		const r = accessRecord({ trace, method: "POST", path: "/v1/completions", status: 200, info, streamEnd: "done", ttfbMs: 52, durationMs: 85 });
		expect(r).toEqual({
			event: "access",
			request_id: "req-1",
			trace_id: trace.traceId,
			method: "POST",
			path: "/v1/completions",
			status: 200,
			key_id_hash: "0123456789abcdef",
			model: "smollm2-135m",
			stream: true,
			tier: "region",
			reason: "no-edge-model",
			attempts: [
				{ region: "us-east", outcome: "upstream 503", ttfb_ms: 12 },
				{ region: "eu-west", outcome: "connection failed", ttfb_ms: null },
				{ region: "ap-south", outcome: "upstream 200 streaming", ttfb_ms: 40 },
			],
			usage: null,
			cache: "none",
			coalesced: false,
			stream_end: "done",
			error_code: null,
			ttfb_ms: 52,
			duration_ms: 85,
		});
		// One line of JSON.
		expect(JSON.stringify(r)).not.toContain("\n");
	});

	it("reads usage only when it has token counts", () => {
		expect(usageOf({ usage: { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 } })).toEqual({ prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 });
		expect(usageOf({ usage: { prompt_tokens: 3, completion_tokens: 4 } })).toEqual({ prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 });
		for (const none of [null, {}, { usage: null }, { usage: { prompt_tokens: "3", completion_tokens: 4 } }, "text"]) expect(usageOf(none)).toBeNull();
	});
});

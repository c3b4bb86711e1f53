import { describe, expect, it } from "vitest";
import { parseTraceparent, traceContext, upstreamTraceHeaders, validRequestId } from "../../src/trace";

const TRACE = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN = "00f067aa0ba902b7";

describe("request ids", () => {
	it("keeps 1 to 128 printable ASCII characters, spaces included, and nothing else", () => {
		for (const ok of ["a", "req-42", "with spaces inside", "~!@#$%^&*()", "r".repeat(128)]) expect(validRequestId(ok), ok).toBe(ok);
		for (const bad of [null, "", "r".repeat(129), "tab\there", "nl\nhere", "del\x7f", "ünïcode"]) expect(validRequestId(bad), String(bad)).toBeNull();
	});

	it("uses the client's id when valid, else a fresh UUID", () => {
		expect(traceContext(new Headers({ "x-request-id": "mine" }))).toMatchObject({ requestId: "mine", clientRequestId: true });
		const a = traceContext(new Headers({ "x-request-id": "x".repeat(200) }));
		const b = traceContext(new Headers());
		expect(a.clientRequestId).toBe(false);
		expect(a.requestId).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}$/);
		expect(a.requestId).not.toBe(b.requestId);
	});
});

describe("traceparent", () => {
	it("accepts version 00 with lower-case hex ids that are not all zeros", () => {
		expect(parseTraceparent(`00-${TRACE}-${SPAN}-01`)).toEqual({ traceId: TRACE, spanId: SPAN, flags: "01" });
		expect(parseTraceparent(`00-${TRACE}-${SPAN}-00`)?.flags).toBe("00");
	});

	it("refuses anything else", () => {
		for (const bad of [
			null,
			"",
			`01-${TRACE}-${SPAN}-01`, // unknown version
			`00-${"0".repeat(32)}-${SPAN}-01`, // all-zero trace id
			`00-${TRACE}-${"0".repeat(16)}-01`, // all-zero parent id
			`00-${TRACE.toUpperCase()}-${SPAN}-01`,
			`00-${TRACE.slice(1)}-${SPAN}-01`,
			`00-${TRACE}-${SPAN}-1`,
			`00-${TRACE}-${SPAN}-01-extra`,
			`00_${TRACE}_${SPAN}_01`,
		]) {
			expect(parseTraceparent(bad), String(bad)).toBeNull();
		}
	});

	it("continues a valid trace and starts a new sampled one otherwise", () => {
		expect(traceContext(new Headers({ traceparent: `00-${TRACE}-${SPAN}-00` }))).toMatchObject({ traceId: TRACE, clientSpanId: SPAN, flags: "00" });
		const fresh = traceContext(new Headers({ traceparent: `00-${"0".repeat(32)}-${SPAN}-01` }));
		expect(fresh.traceId).toMatch(/^[0-9a-f]{32}$/);
		expect(fresh.traceId).not.toBe("0".repeat(32));
		expect(fresh).toMatchObject({ clientSpanId: null, flags: "01" });
	});

	it("gives every upstream attempt the request id and a new span of the same trace", () => {
		const t = traceContext(new Headers({ "x-request-id": "r1", traceparent: `00-${TRACE}-${SPAN}-01` }));
		const [a, b] = [upstreamTraceHeaders(t), upstreamTraceHeaders(t)];
		for (const h of [a, b]) {
			expect(h["x-request-id"]).toBe("r1");
			expect(parseTraceparent(h.traceparent!)).toMatchObject({ traceId: TRACE, flags: "01" });
		}
		expect(a.traceparent).not.toBe(b.traceparent);
		expect(a.traceparent).not.toContain(SPAN);
	});
});

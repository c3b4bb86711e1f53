/**
 * Request ids and W3C trace context. Pure, apart from the random ids it
 * generates (crypto).
 *
 * Every /v1/* request gets an id: the client's `x-request-id` when it is at
 * most 128 printable ASCII characters (what backhaul-inference accepts as its
 * own request id), else a fresh UUID. It is sent to every region tried and
 * returned to the client on every answer, so a client's report, the Worker's
 * access log and the region's logs name the same request.
 *
 * A valid `traceparent` (`00-<32 hex trace-id>-<16 hex parent-id>-<2 hex
 * flags>`, lower case, neither id all zeros) is continued; anything else
 * starts a new trace. Each region attempt is a new span: the region gets
 * `00-<trace-id>-<new parent-id>-<flags>`.
 */

/** At most 128 printable ASCII characters (space to tilde), at least one. */
const REQUEST_ID = /^[\x20-\x7e]{1,128}$/;
const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;
const ALL_ZEROS = /^0+$/;

export interface TraceContext {
	/** the request id the client sent, or the Worker's own */
	requestId: string;
	/** whether requestId is the client's */
	clientRequestId: boolean;
	/** 32 lower-case hex digits */
	traceId: string;
	/** the client's parent span (its traceparent's parent-id), or null for a trace the Worker started */
	clientSpanId: string | null;
	/** 2 hex digits */
	flags: string;
}

/** The client's x-request-id when it is valid, else null. */
export function validRequestId(header: string | null): string | null {
	return header !== null && REQUEST_ID.test(header) ? header : null;
}

/** A traceparent's parts when it is valid (version 00, lower-case hex, ids not all zeros), else null. */
export function parseTraceparent(header: string | null): { traceId: string; spanId: string; flags: string } | null {
	const m = header === null ? null : TRACEPARENT.exec(header.trim());
	if (!m || ALL_ZEROS.test(m[1]!) || ALL_ZEROS.test(m[2]!)) return null;
	return { traceId: m[1]!, spanId: m[2]!, flags: m[3]! };
}

/** `bytes` random bytes as lower-case hex, never all zeros. */
export function randomHex(bytes: number): string {
	for (;;) {
		const hex = [...crypto.getRandomValues(new Uint8Array(bytes))].map((b) => b.toString(16).padStart(2, "0")).join("");
		if (!ALL_ZEROS.test(hex)) return hex;
	}
}

/**
 * The request's id and trace from its headers. A new trace is sampled
 * (flags 01): the Worker's access log records it.
 */
export function traceContext(headers: Headers): TraceContext {
	const clientId = validRequestId(headers.get("x-request-id"));
	const parent = parseTraceparent(headers.get("traceparent"));
	return {
		requestId: clientId ?? crypto.randomUUID(),
		clientRequestId: clientId !== null,
		traceId: parent?.traceId ?? randomHex(16),
		clientSpanId: parent?.spanId ?? null,
		flags: parent?.flags ?? "01",
	};
}

/** The headers one upstream attempt carries: the request id and a traceparent with a new span of the trace. */
export function upstreamTraceHeaders(t: TraceContext): Record<string, string> {
	return { "x-request-id": t.requestId, traceparent: `00-${t.traceId}-${randomHex(8)}-${t.flags}` };
}

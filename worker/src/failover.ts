/**
 * What one failed or finished upstream attempt means for the request. Pure.
 */
export type AttemptOutcome =
	| { kind: "response"; status: number; retryAfter: string | null }
	| { kind: "connect-error" }
	| { kind: "first-byte-timeout" };

/**
 * Why an attempt failed, for the answer when every attempt did:
 * `saturated` (429) and `bad-response` (a region answered with something the
 * Worker does not accept: a redirect, a body over the cap, the wrong content
 * type) pick the status (429, 502); anything else is `unavailable` (503).
 */
export type FailureKind = "unavailable" | "saturated" | "bad-response";

export type Decision =
	/** hand this response to the client (2xx, or a 4xx that is the client's fault) */
	| { action: "use" }
	/** try the next region; `cooldownMs` > 0: keep this region out of rotation that long */
	| { action: "next"; reason: string; cooldownMs: number; failure: FailureKind };

/** Cooldown after a 429 without a usable Retry-After. */
export const DEFAULT_COOLDOWN_MS = 5_000;
/** Longest cooldown honoured, whatever Retry-After says. */
export const MAX_COOLDOWN_MS = 300_000;

/** Retry-After (delay-seconds or an HTTP date) → milliseconds, capped; null when absent or unreadable. */
export function parseRetryAfter(value: string | null, nowMs: number): number | null {
	if (value === null) return null;
	const v = value.trim();
	if (/^\d+$/.test(v)) return Math.min(Number(v) * 1000, MAX_COOLDOWN_MS);
	const at = Date.parse(v);
	if (Number.isNaN(at)) return null;
	return Math.min(Math.max(at - nowMs, 0), MAX_COOLDOWN_MS);
}

export function decide(outcome: AttemptOutcome, nowMs: number): Decision {
	switch (outcome.kind) {
		case "connect-error":
			return { action: "next", reason: "connection failed", cooldownMs: 0, failure: "unavailable" };
		case "first-byte-timeout":
			return { action: "next", reason: "no response headers before firstByteTimeoutMs", cooldownMs: 0, failure: "unavailable" };
		case "response": {
			const s = outcome.status;
			if (s === 429) {
				const ms = parseRetryAfter(outcome.retryAfter, nowMs) ?? DEFAULT_COOLDOWN_MS;
				return { action: "next", reason: "429 saturated", cooldownMs: Math.max(ms, 1), failure: "saturated" };
			}
			if (s >= 500) return { action: "next", reason: `upstream ${s}`, cooldownMs: 0, failure: "unavailable" };
			// Upstream fetches use redirect: "manual": a region never sends the
			// Worker (and the region's credential) somewhere else.
			if (s >= 300 && s < 400) return { action: "next", reason: `upstream ${s} redirect, not followed`, cooldownMs: 0, failure: "bad-response" };
			// The region refused the Worker's own credential (the route's
			// upstreamToken, or the Access service token): a mismatch between the
			// Worker and that region, not the client's fault.
			if (s === 401 || s === 403) {
				return { action: "next", reason: `upstream ${s}: the region refused the Worker's credential`, cooldownMs: 0, failure: "unavailable" };
			}
			if (s < 200) return { action: "next", reason: `upstream ${s}`, cooldownMs: 0, failure: "bad-response" };
			return { action: "use" };
		}
	}
}

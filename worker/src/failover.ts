/**
 * What one failed or finished upstream attempt means for the request. Pure.
 */
export type AttemptOutcome =
	| { kind: "response"; status: number; retryAfter: string | null }
	| { kind: "connect-error" }
	| { kind: "first-byte-timeout" };

export type Decision =
	/** hand this response to the client (2xx, or a 4xx that is the client's fault) */
	| { action: "use" }
	/** try the next region; `cooldownMs` > 0: keep this region out of rotation that long */
	| { action: "next"; reason: string; cooldownMs: number };

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
			return { action: "next", reason: "connection failed", cooldownMs: 0 };
		case "first-byte-timeout":
			return { action: "next", reason: "no response headers before firstByteTimeoutMs", cooldownMs: 0 };
		case "response": {
			if (outcome.status === 429) {
				const ms = parseRetryAfter(outcome.retryAfter, nowMs) ?? DEFAULT_COOLDOWN_MS;
				return { action: "next", reason: "429 saturated", cooldownMs: Math.max(ms, 1) };
			}
			if (outcome.status >= 500) return { action: "next", reason: `upstream ${outcome.status}`, cooldownMs: 0 };
			return { action: "use" };
		}
	}
}

import { describe, expect, it } from "vitest";
import { decide, DEFAULT_COOLDOWN_MS, MAX_COOLDOWN_MS, parseRetryAfter } from "../../src/failover";

const now = Date.parse("2026-11-23T07:00:00Z");
const response = (status: number, retryAfter: string | null = null) => ({ kind: "response" as const, status, retryAfter });

describe("decide", () => {
	it("uses 2xx and client errors as they are", () => {
		expect(decide(response(200), now)).toEqual({ action: "use" });
		expect(decide(response(400), now)).toEqual({ action: "use" });
		expect(decide(response(404), now)).toEqual({ action: "use" });
	});
	it("fails over on 5xx, refused connections and a late first byte, without cooldown", () => {
		for (const o of [response(500), response(503), { kind: "connect-error" as const }, { kind: "first-byte-timeout" as const }]) {
			expect(decide(o, now)).toMatchObject({ action: "next", cooldownMs: 0 });
		}
	});
	it("fails over on a redirect (never followed) and on a region refusing the Worker's credential", () => {
		for (const status of [301, 302, 307, 308]) {
			expect(decide(response(status), now)).toMatchObject({ action: "next", cooldownMs: 0, failure: "bad-response" });
		}
		for (const status of [401, 403]) {
			expect(decide(response(status), now)).toMatchObject({ action: "next", cooldownMs: 0, failure: "unavailable" });
		}
	});
	it("says which failures are saturation, bad answers and unavailability", () => {
		expect(decide(response(429), now)).toMatchObject({ failure: "saturated" });
		expect(decide(response(503), now)).toMatchObject({ failure: "unavailable" });
		expect(decide({ kind: "connect-error" }, now)).toMatchObject({ failure: "unavailable" });
	});
	it("fails over on 429 and cools the region down for its Retry-After", () => {
		expect(decide(response(429, "30"), now)).toMatchObject({ action: "next", cooldownMs: 30_000 });
		expect(decide(response(429, "Mon, 23 Nov 2026 07:00:10 GMT"), now)).toMatchObject({ cooldownMs: 10_000 });
		expect(decide(response(429), now)).toMatchObject({ cooldownMs: DEFAULT_COOLDOWN_MS });
		expect(decide(response(429, "86400"), now)).toMatchObject({ cooldownMs: MAX_COOLDOWN_MS });
	});
});

describe("parseRetryAfter", () => {
	it("reads seconds and HTTP dates and ignores junk", () => {
		expect(parseRetryAfter("0", now)).toBe(0);
		expect(parseRetryAfter("soon", now)).toBeNull();
		expect(parseRetryAfter(null, now)).toBeNull();
		expect(parseRetryAfter("Mon, 23 Nov 2026 06:59:00 GMT", now)).toBe(0);
	});
});

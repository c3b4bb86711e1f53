/**
 * The lease digest against docs/schemas/lease-digest-vectors.json (made by
 * scripts/signature-vectors.py with Python's hashlib; the operator tests the
 * same file), the lease body's validation, and the one expiry function.
 */
import { describe, expect, it } from "vitest";
import vectors from "../../../docs/schemas/lease-digest-vectors.json";
import { leaseDigest, validateLease } from "../../src/lease";
import { expiresAtMs, isExpired, ValidationError } from "../../src/route";

describe("lease digest vectors", () => {
	it("computes every case's digest, the empty set's being SHA-256 of the empty string", async () => {
		expect(vectors.cases.length).toBeGreaterThanOrEqual(4);
		for (const c of vectors.cases) {
			expect(await leaseDigest(c.routes), c.description).toBe(c.digest);
		}
		expect(await leaseDigest([])).toBe("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
	});

	it("does not depend on the order the routes come in, and changes with one sequence", async () => {
		const c = vectors.cases.find((v) => v.description.startsWith("sorted"))!;
		expect(await leaseDigest([...c.routes].reverse())).toBe(c.digest);
		const changed = vectors.cases.find((v) => v.description.startsWith("one sequence"))!;
		expect(changed.digest).not.toBe(c.digest);
	});
});

describe("validateLease", () => {
	const good = { sequence: 5, routes: 2, digest: "a".repeat(64) };
	it("accepts the body and ignores unknown fields", () => {
		expect(validateLease({ ...good, extra: true })).toEqual(good);
		expect(validateLease({ ...good, routes: 0 })).toMatchObject({ routes: 0 });
	});

	it("names the field it refuses", () => {
		const cases: [unknown, string][] = [
			[[], "body"],
			[null, "body"],
			[{ ...good, sequence: 0 }, "sequence"],
			[{ ...good, sequence: 2 ** 53 }, "sequence"],
			[{ ...good, sequence: "5" }, "sequence"],
			[{ ...good, routes: -1 }, "routes"],
			[{ ...good, routes: 1.5 }, "routes"],
			[{ ...good, digest: "A".repeat(64) }, "digest"],
			[{ ...good, digest: "a".repeat(63) }, "digest"],
			[{ sequence: 5, routes: 2 }, "digest"],
		];
		for (const [body, field] of cases) {
			let err: unknown;
			try {
				validateLease(body);
			} catch (e) {
				err = e;
			}
			expect(err, JSON.stringify(body)).toBeInstanceOf(ValidationError);
			expect((err as ValidationError).field, JSON.stringify(body)).toBe(field);
		}
	});
});

describe("expiresAtMs: the one expiry", () => {
	const t0 = Date.parse("2026-12-01T07:00:00Z");
	it("is max(receivedAt, the writer's lease renewal) + ttlSeconds, unless a renewal found the route dead", () => {
		expect(expiresAtMs({ receivedAtMs: t0, ttlSeconds: 60 })).toBe(t0 + 60_000);
		expect(expiresAtMs({ receivedAtMs: t0, ttlSeconds: 60, leaseRenewedAtMs: null })).toBe(t0 + 60_000);
		expect(expiresAtMs({ receivedAtMs: t0, ttlSeconds: 60, leaseRenewedAtMs: t0 + 40_000 })).toBe(t0 + 100_000);
		// A lease renewed before the route was last written does not shorten it.
		expect(expiresAtMs({ receivedAtMs: t0, ttlSeconds: 60, leaseRenewedAtMs: t0 - 30_000 })).toBe(t0 + 60_000);
		expect(expiresAtMs({ receivedAtMs: t0, ttlSeconds: 60, leaseRenewedAtMs: t0 + 500_000, lapsedAtMs: t0 + 60_000 })).toBe(t0 + 60_000);
		expect(isExpired({ receivedAtMs: t0, ttlSeconds: 60, leaseRenewedAtMs: t0 + 40_000 }, t0 + 99_999)).toBe(false);
		expect(isExpired({ receivedAtMs: t0, ttlSeconds: 60, leaseRenewedAtMs: t0 + 40_000 }, t0 + 100_000)).toBe(true);
	});
});

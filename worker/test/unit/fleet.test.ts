/** The fleet view's pure parts (src/fleet.ts): what its version covers, and If-None-Match. */
import { describe, expect, it } from "vitest";
import { fleetModels, fleetVersion, parseIfNoneMatch, sortRows, type FleetRow } from "../../src/fleet";

const t0 = Date.parse("2026-12-01T07:00:00Z");
const row = (extra: Partial<FleetRow> = {}): FleetRow => ({
	model: "llama-70b",
	namespace: "ml",
	name: "llama",
	region: "eu-west",
	keyId: "eu-west-1",
	readyReplicas: 2,
	receivedAtMs: t0,
	ttlSeconds: 120,
	leaseRenewedAtMs: null,
	lapsedAtMs: null,
	...extra,
});

describe("fleetVersion", () => {
	it("ignores a renewal that only moves expiresAt, and holds until the next expiry", async () => {
		const before = await fleetVersion([row()], false, t0 + 10_000);
		const renewed = await fleetVersion([row({ leaseRenewedAtMs: t0 + 40_000 })], false, t0 + 50_000);
		expect(renewed.version).toBe(before.version);
		expect(before.validUntilMs).toBe(t0 + 120_000);
		expect(renewed.validUntilMs).toBe(t0 + 160_000);
	});

	it("changes when a route expires, is rewritten, changes its ready replicas or writer, and when truncated", async () => {
		const { version } = await fleetVersion([row()], false, t0 + 10_000);
		const others = [
			await fleetVersion([row()], false, t0 + 120_000),
			await fleetVersion([row({ receivedAtMs: t0 + 1 })], false, t0 + 10_000),
			await fleetVersion([row({ readyReplicas: 1 })], false, t0 + 10_000),
			await fleetVersion([row({ keyId: "eu-west-2" })], false, t0 + 10_000),
			await fleetVersion([row(), row({ region: "us-east" })], false, t0 + 10_000),
			await fleetVersion([row()], true, t0 + 10_000),
			await fleetVersion([], false, t0 + 10_000),
		];
		for (const o of others) expect(o.version).not.toBe(version);
		expect(new Set(others.map((o) => o.version)).size).toBe(others.length);
	});
});

describe("fleetModels", () => {
	it("groups by model, in key order, with the effective expiry", () => {
		const rows = sortRows([row({ region: "us-east", leaseRenewedAtMs: t0 + 60_000 }), row({ model: "a-model" }), row()]);
		expect(Object.keys(fleetModels(rows, t0))).toEqual(["a-model", "llama-70b"]);
		expect(fleetModels(rows, t0 + 130_000)["llama-70b"]).toEqual([
			{ namespace: "ml", name: "llama", region: "eu-west", keyId: "eu-west-1", readyReplicas: 2, receivedAt: "2026-12-01T07:00:00.000Z", expiresAt: "2026-12-01T07:02:00.000Z", expired: true },
			{ namespace: "ml", name: "llama", region: "us-east", keyId: "eu-west-1", readyReplicas: 2, receivedAt: "2026-12-01T07:00:00.000Z", expiresAt: "2026-12-01T07:03:00.000Z", expired: false },
		]);
	});
});

describe("parseIfNoneMatch", () => {
	it("reads lists, weak tags and *", () => {
		expect(parseIfNoneMatch(null)).toEqual([]);
		expect(parseIfNoneMatch('"abc"')).toEqual(["abc"]);
		expect(parseIfNoneMatch(' W/"abc" , "def",junk')).toEqual(["abc", "def"]);
		expect(parseIfNoneMatch("*")).toEqual(["*"]);
	});
});

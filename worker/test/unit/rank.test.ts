import { describe, expect, it } from "vitest";
import { haversineKm, isLive, locationFromCf, parseLocation, rankRegions } from "../../src/rank";
import { makeRoute, storedRoute } from "../helpers";

const now = Date.parse("2026-11-23T07:00:30Z");
// Received when published (storedRoute's default), unless a test says otherwise.
const at = (region: string, latitude: number, longitude: number, extra = {}) =>
	storedRoute(makeRoute({ region, location: { latitude, longitude }, publishedAt: "2026-11-23T07:00:00Z", ttlSeconds: 60, ...extra }));

const usEast = at("us-east", 39.04, -77.49);
const euWest = at("eu-west", 53.35, -6.26);
const apSouth = at("ap-south", 19.07, 72.88);
const london = { latitude: 51.51, longitude: -0.13 };
const noCooldown = new Map<string, number>();

describe("haversineKm", () => {
	it("measures great-circle distance", () => {
		expect(haversineKm(london, { latitude: 40.71, longitude: -74.01 })).toBeCloseTo(5570, -1);
		expect(haversineKm(london, london)).toBe(0);
		// across the antimeridian
		expect(haversineKm({ latitude: 0, longitude: 179.5 }, { latitude: 0, longitude: -179.5 })).toBeCloseTo(111.2, 0);
	});
});

describe("rankRegions", () => {
	const rank = (client: typeof london | null, fallback: typeof london | null = null, routes = [apSouth, usEast, euWest]) =>
		rankRegions({ routes, model: "smollm2-135m", client, fallback, nowMs: now, cooldownUntil: noCooldown }).routes.map((r) => r.region);

	it("orders live regions nearest first", () => {
		expect(rank(london)).toEqual(["eu-west", "us-east", "ap-south"]);
		expect(rank({ latitude: 37.77, longitude: -122.42 })).toEqual(["us-east", "eu-west", "ap-south"]);
		expect(rank({ latitude: 1.35, longitude: 103.82 })).toEqual(["ap-south", "eu-west", "us-east"]);
	});
	it("uses the default location when the request has none", () => {
		expect(rank(null, { latitude: 19, longitude: 73 })).toEqual(["ap-south", "eu-west", "us-east"]);
	});
	it("orders by ready replicas when there is no location at all", () => {
		const routes = [at("a", 0, 0, { readyReplicas: 1 }), at("b", 10, 10, { readyReplicas: 5 }), at("c", 20, 20, { readyReplicas: 3 })];
		expect(rank(null, null, routes)).toEqual(["b", "c", "a"]);
	});
	it("breaks distance ties by ready replicas", () => {
		const routes = [at("small", 50, 0, { readyReplicas: 1 }), at("big", 50, 0.001, { readyReplicas: 4 })];
		expect(rank({ latitude: 50, longitude: 0 }, null, routes)).toEqual(["big", "small"]);
	});
	it("leaves out expired, unready, cooling-down and other models' regions", () => {
		const expired = at("expired", 51, 0, { publishedAt: "2026-11-23T06:58:00Z", ttlSeconds: 60 });
		const unready = at("unready", 51, 0, { readyReplicas: 0 });
		const other = at("other", 51, 0, { model: "other-model" });
		const cooling = at("cooling", 51, 0);
		const cooldowns = new Map([["default/smollm2/cooling", now + 1000]]);
		const ranked = rankRegions({ routes: [expired, unready, other, cooling, usEast], model: "smollm2-135m", client: london, fallback: null, nowMs: now, cooldownUntil: cooldowns });
		expect(ranked.routes.map((r) => r.region)).toEqual(["us-east"]);
		// a cooldown that has passed no longer counts
		expect(isLive(cooling, now + 1000, cooldowns)).toBe(true);
	});
	it("treats a route as dead exactly ttlSeconds after the Worker received it, whatever its publishedAt", () => {
		const r = at("x", 0, 0);
		expect(isLive(r, Date.parse("2026-11-23T07:00:59.999Z"), noCooldown)).toBe(true);
		expect(isLive(r, Date.parse("2026-11-23T07:01:00Z"), noCooldown)).toBe(false);
		const claimsLater = storedRoute(makeRoute({ publishedAt: "9999-12-31T23:59:59Z", ttlSeconds: 60 }), Date.parse("2026-11-23T07:00:00Z"));
		expect(isLive(claimsLater, Date.parse("2026-11-23T07:01:00Z"), noCooldown)).toBe(false);
	});
});

describe("locations", () => {
	it("reads request.cf strings and numbers, ignoring missing or bad ones", () => {
		expect(locationFromCf({ latitude: "51.5", longitude: "-0.1" })).toEqual({ latitude: 51.5, longitude: -0.1 });
		expect(locationFromCf({ latitude: 10, longitude: 20 })).toEqual({ latitude: 10, longitude: 20 });
		expect(locationFromCf(undefined)).toBeNull();
		expect(locationFromCf({ latitude: "", longitude: "" })).toBeNull();
		expect(locationFromCf({ latitude: "95", longitude: "0" })).toBeNull();
	});
	it("parses the DEFAULT_LOCATION var", () => {
		expect(parseLocation("39.04,-77.49")).toEqual({ latitude: 39.04, longitude: -77.49 });
		expect(parseLocation("")).toBeNull();
		expect(parseLocation("north")).toBeNull();
	});
});

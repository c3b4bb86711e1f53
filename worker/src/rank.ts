/**
 * Which regions may serve a request, best first. Pure.
 *
 * Live: not expired (route.ts `expiresAtMs`: `ttlSeconds` after the Worker received
 * the route or last renewed its writer's lease), `readyReplicas > 0`, and not
 * cooling down after a 429. Order: great-circle distance from the client
 * (haversine over a spherical Earth), ties (within 1 km) broken by more ready
 * replicas, then by region name so the order is stable. Without a client
 * location the configured default location is used; without that, regions
 * are ordered by ready replicas.
 */
import { isExpired, routeKey, type Expiry, type RouteKey, type StoredRoute } from "./route";

export interface LatLon {
	latitude: number;
	longitude: number;
}

const EARTH_RADIUS_KM = 6371.0088;
const TIE_KM = 1;

export function haversineKm(a: LatLon, b: LatLon): number {
	const rad = Math.PI / 180;
	const dLat = (b.latitude - a.latitude) * rad;
	const dLon = (b.longitude - a.longitude) * rad;
	const h = Math.sin(dLat / 2) ** 2 + Math.cos(a.latitude * rad) * Math.cos(b.latitude * rad) * Math.sin(dLon / 2) ** 2;
	return 2 * EARTH_RADIUS_KM * Math.asin(Math.min(1, Math.sqrt(h)));
}

/** `"lat,lon"` → LatLon, or null when empty or malformed. */
export function parseLocation(s: string | undefined | null): LatLon | null {
	if (!s) return null;
	const parts = s.split(",").map((p) => p.trim());
	if (parts.length !== 2 || parts[0] === "" || parts[1] === "") return null;
	const latitude = Number(parts[0]);
	const longitude = Number(parts[1]);
	return validLatLon(latitude, longitude) ? { latitude, longitude } : null;
}

function validLatLon(latitude: number, longitude: number): boolean {
	return Number.isFinite(latitude) && Number.isFinite(longitude) && Math.abs(latitude) <= 90 && Math.abs(longitude) <= 180;
}

/** The client's location from `request.cf` (strings in production, numbers sometimes in tests). */
export function locationFromCf(cf: { latitude?: unknown; longitude?: unknown } | undefined): LatLon | null {
	if (!cf || cf.latitude === undefined || cf.longitude === undefined || cf.latitude === null || cf.longitude === null) return null;
	if (cf.latitude === "" || cf.longitude === "") return null;
	const latitude = Number(cf.latitude);
	const longitude = Number(cf.longitude);
	return validLatLon(latitude, longitude) ? { latitude, longitude } : null;
}

/** What liveness needs of a route: a stored route, or the table's summary of one (table.ts `RouteSummary`). */
export type Liveness = RouteKey & Expiry & { readyReplicas: number };

export function isLive(r: Liveness, nowMs: number, cooldownUntil: ReadonlyMap<string, number>): boolean {
	if (isExpired(r, nowMs) || r.readyReplicas <= 0) return false;
	if (cooldownUntil.size === 0) return true;
	const until = cooldownUntil.get(routeKey(r));
	return until === undefined || until <= nowMs;
}

export type LocationSource = "client" | "default" | "none";

export interface Ranked {
	routes: StoredRoute[];
	origin: LatLon | null;
	locationSource: LocationSource;
}

export function rankRegions(opts: {
	routes: readonly StoredRoute[];
	model: string;
	client: LatLon | null;
	fallback: LatLon | null;
	nowMs: number;
	cooldownUntil: ReadonlyMap<string, number>;
}): Ranked {
	const origin = opts.client ?? opts.fallback;
	const locationSource: LocationSource = opts.client ? "client" : opts.fallback ? "default" : "none";
	const live = opts.routes.filter((r) => r.model === opts.model && isLive(r, opts.nowMs, opts.cooldownUntil));
	const withDistance = live.map((r) => ({ r, d: origin ? haversineKm(origin, r.location) : 0 }));
	withDistance.sort((a, b) => {
		if (Math.abs(a.d - b.d) > TIE_KM) return a.d - b.d;
		if (a.r.readyReplicas !== b.r.readyReplicas) return b.r.readyReplicas - a.r.readyReplicas;
		return routeKey(a.r) < routeKey(b.r) ? -1 : routeKey(a.r) > routeKey(b.r) ? 1 : 0;
	});
	return { routes: withDistance.map((x) => x.r), origin, locationSource };
}

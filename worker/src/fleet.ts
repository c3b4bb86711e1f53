/**
 * The fleet view of docs/publication.md ("The fleet view"): every region of
 * every model the caller's publisher group owns, with a version an operator
 * polls with If-None-Match. Pure: the table (table.ts) reads the rows, this
 * shapes them, versions them and answers the conditional request.
 *
 * What the version covers: each route's model, key, keyId, readyReplicas,
 * receivedAt and `expired`, and whether the view was truncated. A write, a
 * withdrawal, a deletion by the alarm and an expiry change it. A renewal that
 * only moves `expiresAt` later does not: otherwise every operator's
 * heartbeat (every 40 s at the default TTL) would change every poller's
 * version and a 304 would be rare. So after a 304 the `expiresAt` a poller
 * holds is a lower bound; `expired` is exact.
 */
import { expiresAtMs, type Expiry } from "./route";

/** The most routes one fleet view holds. 1,000 models × 3 regions is 3,000 routes, about 0.7 MB of JSON (226 bytes a route with long names); 20,000 is about 4.5 MB. */
export const FLEET_MAX_ROUTES = 20_000;

/** One route of the view as the table reads it (columns only, never the route's JSON or token). */
export interface FleetRow extends Expiry {
	model: string;
	namespace: string;
	name: string;
	region: string;
	keyId: string;
	readyReplicas: number;
}

export interface FleetEntry {
	namespace: string;
	name: string;
	region: string;
	keyId: string;
	readyReplicas: number;
	receivedAt: string;
	expiresAt: string;
	expired: boolean;
}

export interface FleetView {
	version: string;
	models: Record<string, FleetEntry[]>;
	/** Present (true) only when the group's models hold more than FLEET_MAX_ROUTES routes; the first ones by model and key are shown. */
	truncated?: true;
}

/** Rows in the view's order: by model, then namespace/name/region (bytewise). */
export function sortRows(rows: FleetRow[]): FleetRow[] {
	const key = (r: FleetRow) => `${r.model}\u0000${r.namespace}/${r.name}/${r.region}`;
	return rows.sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0));
}

const encoder = new TextEncoder();

/**
 * The version of the rows at `nowMs` (sorted, already cut to the bound), and
 * until when it holds if nothing is written: the next expiry among the live
 * rows (a renewal may push that later; the version is then recomputed and
 * comes out the same).
 */
export async function fleetVersion(rows: readonly FleetRow[], truncated: boolean, nowMs: number): Promise<{ version: string; validUntilMs: number }> {
	let text = truncated ? "truncated\n" : "";
	let validUntilMs = Number.POSITIVE_INFINITY;
	for (const r of rows) {
		const expires = expiresAtMs(r);
		const expired = nowMs >= expires;
		if (!expired) validUntilMs = Math.min(validUntilMs, expires);
		text += `${r.model}\t${r.namespace}/${r.name}/${r.region}\t${r.keyId}\t${r.readyReplicas}\t${r.receivedAtMs}\t${expired ? 1 : 0}\n`;
	}
	const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", encoder.encode(text)));
	let hex = "";
	for (const b of digest.subarray(0, 16)) hex += b.toString(16).padStart(2, "0");
	return { version: hex, validUntilMs };
}

/** The answer's models at `nowMs`. */
export function fleetModels(rows: readonly FleetRow[], nowMs: number): Record<string, FleetEntry[]> {
	const models: Record<string, FleetEntry[]> = {};
	for (const r of rows) {
		const expires = expiresAtMs(r);
		(models[r.model] ??= []).push({
			namespace: r.namespace,
			name: r.name,
			region: r.region,
			keyId: r.keyId,
			readyReplicas: r.readyReplicas,
			receivedAt: new Date(r.receivedAtMs).toISOString(),
			expiresAt: new Date(expires).toISOString(),
			expired: nowMs >= expires,
		});
	}
	return models;
}

/**
 * The versions an If-None-Match header names: entity tags unquoted, weak
 * ones too (RFC 9110 compares weakly for GET), and `*` as itself.
 */
export function parseIfNoneMatch(header: string | null): string[] {
	if (header === null) return [];
	const out: string[] = [];
	for (const tag of header.split(",")) {
		const t = tag.trim().replace(/^W\//, "");
		if (t === "*") out.push("*");
		else if (t.length >= 2 && t.startsWith('"') && t.endsWith('"')) out.push(t.slice(1, -1));
	}
	return out;
}

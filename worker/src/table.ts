/**
 * The route table: one SQLite-backed Durable Object holds every route, every
 * tombstone, every publisher key's lease and every model's owner, so writes
 * are serialized and each write's ownership, cap and sequence checks and the
 * write itself are one transaction (docs/publication.md, "Ordering",
 * "Ownership", "The table at fleet size"). It survives restarts and
 * redeploys: the constructor migrates older schemas in place.
 *
 * Reads are indexed: the request path reads one model's rows (`modelRoutes`),
 * a renewal one key's, the fleet view one owner group's models'. Only the
 * alarm's sweep and `/v1/models`'s catalogue scan every row, and neither
 * parses a route's JSON. An alarm set by the earliest pending deletion
 * removes expired routes (leaving tombstones), expired tombstones and
 * forgotten leases, a bounded batch per run.
 *
 * The request path reads the table through route-cache.ts.
 */
import { DurableObject } from "cloudflare:workers";
import { FLEET_MAX_ROUTES, fleetModels, fleetVersion, sortRows, type FleetRow, type FleetView } from "./fleet";
import { leaseDigest, type HeldRoute } from "./lease";
import { BOUNDS, expiresAtMs, routeKey, type RouteKey, type StoredRoute } from "./route";

/** How long a tombstone outlives its DELETE or its route's deletion: the longest ttlSeconds, so no route it replaced can still be live. */
export const TOMBSTONE_TTL_MS = BOUNDS.ttlSeconds[1] * 1000;
/**
 * How long an expired route stays in the table, answered with `expired: true`
 * (the admin GETs, the fleet view) and ignored by ranking, before the alarm
 * deletes it and leaves a tombstone. An hour: a region whose cluster died
 * shows as expired in the other clusters' status rather than vanishing.
 */
export const EXPIRED_ROUTE_RETENTION_MS = 3600 * 1000;
/** A lease whose key holds no route is forgotten this long after its last renewal (a replay of it is by then long outside the signature window). */
export const LEASE_RETENTION_MS = BOUNDS.ttlSeconds[1] * 1000;
/** The most rows of each kind (routes, tombstones, leases) one alarm run deletes; more left: the alarm runs again at once. */
export const SWEEP_BATCH = 500;
/** The most routes one admin list page holds. */
export const LIST_PAGE_MAX = 1000;

/**
 * route.ts `expiresAtMs` as SQL over `route_entries r LEFT JOIN leases l`, for
 * the alarm's scans only: they select candidates with it, and each candidate
 * is judged again with `expiresAtMs` before anything is deleted. Every other
 * judgement reads the columns and calls `expiresAtMs`.
 */
const EXPIRY_SQL = "COALESCE(r.lapsed_at_ms, MAX(r.received_at_ms, COALESCE(l.renewed_at_ms, 0)) + r.ttl_seconds * 1000)";
const FROM_ROUTES = "route_entries r LEFT JOIN leases l ON l.key_id = r.key_id";
/** The columns `expiresAtMs` needs, from FROM_ROUTES. */
const EXPIRY_COLUMNS = "r.received_at_ms, r.ttl_seconds, r.lapsed_at_ms, l.renewed_at_ms";

interface ExpiryRow extends Record<string, SqlStorageValue> {
	received_at_ms: number;
	ttl_seconds: number;
	lapsed_at_ms: number | null;
	renewed_at_ms: number | null;
}
const rowExpiresAtMs = (r: ExpiryRow): number =>
	expiresAtMs({ receivedAtMs: r.received_at_ms, ttlSeconds: r.ttl_seconds, lapsedAtMs: r.lapsed_at_ms, leaseRenewedAtMs: r.renewed_at_ms });

export interface Tombstone {
	sequence: number;
	group: string;
	keyId: string;
	deletedAtMs: number;
	expiresAtMs: number;
}

export interface Lease {
	keyId: string;
	sequence: number;
	renewedAtMs: number;
	/** The Worker's count and digest of the live routes `keyId` last wrote. */
	routes: number;
	digest: string;
}

/** A model and the edge model its route named, to drop an isolate's copies after a write. */
export interface Touched {
	model: string;
	edgeModel: string | null;
}

export type Refusal =
	| { ok: false; code: "model_owned"; owner: string }
	| { ok: false; code: "route_owned"; group: string; kind: "route" | "tombstone" }
	| { ok: false; code: "route_limit_exceeded"; cap: number }
	| { ok: false; code: "stale_sequence"; stored: number; kind: "route" | "tombstone" | "lease" };

export type PutResult = { ok: true; route: StoredRoute; touched: Touched[] } | Refusal;
export type DeleteResult =
	| { ok: true; outcome: "deleted" | "tombstoned" | "already_deleted"; touched: Touched[] }
	| Extract<Refusal, { code: "route_owned" | "stale_sequence" }>;
export type RenewResult = { ok: true; lease: Lease } | Extract<Refusal, { code: "stale_sequence" }>;

export interface PutRequest {
	/** The route with what the Worker adds; `owner` must be `{group}/{namespace}` of the writer. */
	route: StoredRoute;
	/** BACKHAUL_MODEL_OWNERS' owner of the route's model, if it names one. */
	configuredOwner: string | null;
	/** MAX_ROUTES_PER_PUBLISHER: the most live routes `route.keyId` may hold. */
	maxRoutesPerKey: number;
	nowMs: number;
}

export interface DeleteRequest {
	key: RouteKey;
	sequence: number;
	group: string;
	keyId: string;
	nowMs: number;
}

export interface RenewRequest {
	keyId: string;
	group: string;
	sequence: number;
	nowMs: number;
}

/** A page of the admin list: routes after `after` (a route key) inside the scope; `null` scope: any. */
export interface ListRequest {
	after: string;
	limit: number;
	namespaces: string[] | null;
	regions: string[] | null;
}

export interface FleetRequest {
	group: string;
	/** BACKHAUL_MODEL_OWNERS (model → `{group}/{namespace}`): it overrides the claims. */
	configuredOwners: Record<string, string>;
	/** The versions the caller holds (its If-None-Match, unquoted; `*` matches any); a match answers `notModified`. */
	ifNoneMatch: string[];
	nowMs: number;
}

/** One model's routes, what the request path reads on a cache miss. */
export interface ModelRoutes {
	routes: StoredRoute[];
	/** Whether some route names this model as its edge model (a client may ask for an edge model directly). Only looked up when `routes` is empty. */
	edgeServed: boolean;
	/** SQLite rows this read touched (the cursors' rowsRead): what a cache miss costs. */
	rowsRead: number;
}

/** A route as `/v1/models` needs it: its liveness, model and edge model, without its JSON. */
export interface RouteSummary {
	namespace: string;
	name: string;
	region: string;
	model: string;
	edgeModel: string | null;
	readyReplicas: number;
	receivedAtMs: number;
	ttlSeconds: number;
	leaseRenewedAtMs: number | null;
	lapsedAtMs: number | null;
}

interface RouteRow extends Record<string, SqlStorageValue> {
	sequence: number;
	grp: string;
	key_id: string;
	model: string;
	edge_model: string | null;
}
interface JsonRow extends Record<string, SqlStorageValue> {
	route: string;
	lapsed_at_ms: number | null;
	renewed_at_ms: number | null;
}
interface TombstoneRow extends Record<string, SqlStorageValue> {
	sequence: number;
	grp: string;
	key_id: string;
	deleted_at_ms: number;
	expires_at_ms: number;
}
interface SummaryRow extends Record<string, SqlStorageValue> {
	namespace: string;
	name: string;
	region: string;
	model: string;
	edge_model: string | null;
	key_id: string;
	ready_replicas: number;
	received_at_ms: number;
	ttl_seconds: number;
	lapsed_at_ms: number | null;
	renewed_at_ms: number | null;
}

const SUMMARY_COLUMNS =
	"r.namespace, r.name, r.region, r.model, r.edge_model, r.key_id, r.ready_replicas, r.received_at_ms, r.ttl_seconds, r.lapsed_at_ms, l.renewed_at_ms";

/** The row's route with what the table adds on reading. */
function fromJsonRow(row: JsonRow): StoredRoute {
	return { ...(JSON.parse(row.route) as StoredRoute), leaseRenewedAtMs: row.renewed_at_ms, lapsedAtMs: row.lapsed_at_ms };
}

/** What a stored route's JSON holds: the route as received and what the Worker added, never what the table adds on reading. */
function persisted(route: StoredRoute): string {
	const { leaseRenewedAtMs: _l, lapsedAtMs: _x, ...rest } = route;
	return JSON.stringify(rest);
}

/**
 * Creates the current schema and migrates older ones, in one transaction, so
 * a redeploy keeps every live route. v1 (`routes`, the HMAC era) had no
 * sequence, owner or token: nothing in it can be served and it is dropped.
 * v2 (`published_routes`: key, sequence, grp and the JSON) is copied into
 * `route_entries`, its indexed columns taken from the JSON.
 */
export function migrate(sql: SqlStorage): void {
	sql.exec("DROP TABLE IF EXISTS routes");
	sql.exec(
		`CREATE TABLE IF NOT EXISTS route_entries (
			key TEXT PRIMARY KEY,
			namespace TEXT NOT NULL,
			name TEXT NOT NULL,
			region TEXT NOT NULL,
			model TEXT NOT NULL,
			edge_model TEXT,
			key_id TEXT NOT NULL,
			grp TEXT NOT NULL,
			sequence INTEGER NOT NULL,
			ready_replicas INTEGER NOT NULL,
			received_at_ms INTEGER NOT NULL,
			ttl_seconds INTEGER NOT NULL,
			lapsed_at_ms INTEGER,
			route TEXT NOT NULL
		)`,
	);
	sql.exec("CREATE INDEX IF NOT EXISTS route_entries_model ON route_entries (model)");
	sql.exec("CREATE INDEX IF NOT EXISTS route_entries_edge_model ON route_entries (edge_model) WHERE edge_model IS NOT NULL");
	sql.exec("CREATE INDEX IF NOT EXISTS route_entries_key_id ON route_entries (key_id)");
	sql.exec(
		`CREATE TABLE IF NOT EXISTS tombstones (
			key TEXT PRIMARY KEY,
			sequence INTEGER NOT NULL,
			grp TEXT NOT NULL,
			key_id TEXT NOT NULL,
			deleted_at_ms INTEGER NOT NULL,
			expires_at_ms INTEGER NOT NULL
		)`,
	);
	sql.exec("CREATE INDEX IF NOT EXISTS tombstones_expiry ON tombstones (expires_at_ms)");
	sql.exec(
		`CREATE TABLE IF NOT EXISTS model_owners (
			model TEXT PRIMARY KEY,
			owner TEXT NOT NULL,
			claimed_at_ms INTEGER NOT NULL
		)`,
	);
	sql.exec("CREATE INDEX IF NOT EXISTS model_owners_owner ON model_owners (owner)");
	sql.exec(
		`CREATE TABLE IF NOT EXISTS leases (
			key_id TEXT PRIMARY KEY,
			grp TEXT NOT NULL,
			sequence INTEGER NOT NULL,
			renewed_at_ms INTEGER NOT NULL
		)`,
	);
	const v2 = sql.exec("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'published_routes'").toArray().length > 0;
	if (v2) {
		sql.exec(
			`INSERT OR IGNORE INTO route_entries
				(key, namespace, name, region, model, edge_model, key_id, grp, sequence, ready_replicas, received_at_ms, ttl_seconds, lapsed_at_ms, route)
			 SELECT key, json_extract(route, '$.namespace'), json_extract(route, '$.name'), json_extract(route, '$.region'),
				json_extract(route, '$.model'), json_extract(route, '$.edgeModel'), json_extract(route, '$.keyId'), grp, sequence,
				json_extract(route, '$.readyReplicas'), json_extract(route, '$.receivedAtMs'), json_extract(route, '$.ttlSeconds'), NULL, route
			 FROM published_routes`,
		);
		sql.exec("DROP TABLE published_routes");
	}
}

export class RouteTable extends DurableObject<Env> {
	private readonly sql: SqlStorage;
	/** The alarm as this instance last set or read it; undefined: not read yet. */
	private alarmAtMs: number | null | undefined;
	/**
	 * Changes to what any fleet view shows (writes, withdrawals, deletions),
	 * counted in memory: all writes pass through this one instance, and a new
	 * instance starts with no cached versions.
	 */
	private mutations = 0;
	private readonly fleetVersions = new Map<string, { mutations: number; computedAtMs: number; validUntilMs: number; version: string }>();

	constructor(ctx: DurableObjectState, env: Env) {
		super(ctx, env);
		this.sql = ctx.storage.sql;
		ctx.storage.transactionSync(() => migrate(this.sql));
		// A table with rows and no alarm (migrated from a Worker without one,
		// say) gets one, at its earliest pending deletion.
		void ctx.blockConcurrencyWhile(async () => {
			this.alarmAtMs = await ctx.storage.getAlarm();
			if (this.alarmAtMs !== null) return;
			const next = this.nextSweepAtMs();
			if (next !== null) await this.armBy(next);
		});
	}

	private storedRoute(key: string): RouteRow | undefined {
		return this.sql.exec<RouteRow>("SELECT sequence, grp, key_id, model, edge_model FROM route_entries WHERE key = ?", key).toArray()[0];
	}

	/** The live tombstone at `key`. */
	private tombstone(key: string, nowMs: number): TombstoneRow | undefined {
		return this.sql
			.exec<TombstoneRow>("SELECT sequence, grp, key_id, deleted_at_ms, expires_at_ms FROM tombstones WHERE key = ? AND expires_at_ms > ?", key, nowMs)
			.toArray()[0];
	}

	private writeTombstone(key: string, t: { sequence: number; grp: string; key_id: string; deleted_at_ms: number }): void {
		this.sql.exec(
			`INSERT INTO tombstones (key, sequence, grp, key_id, deleted_at_ms, expires_at_ms) VALUES (?, ?, ?, ?, ?, ?)
			 ON CONFLICT(key) DO UPDATE SET sequence = excluded.sequence, grp = excluded.grp, key_id = excluded.key_id,
			   deleted_at_ms = excluded.deleted_at_ms, expires_at_ms = excluded.expires_at_ms`,
			key,
			t.sequence,
			t.grp,
			t.key_id,
			t.deleted_at_ms,
			t.deleted_at_ms + TOMBSTONE_TTL_MS,
		);
	}

	/** The routes `keyId` last wrote that are live at `nowMs` (by its key id index). */
	private liveRoutes(keyId: string, nowMs: number): HeldRoute[] {
		return this.sql
			.exec<ExpiryRow & HeldRoute>(`SELECT r.key, r.sequence, ${EXPIRY_COLUMNS} FROM ${FROM_ROUTES} WHERE r.key_id = ?`, keyId)
			.toArray()
			.filter((r) => rowExpiresAtMs(r) > nowMs)
			.map((r) => ({ key: r.key, sequence: r.sequence }));
	}

	/** Makes sure the alarm fires by `atMs` (an earlier one stays: it re-arms itself). */
	private async armBy(atMs: number): Promise<void> {
		if (this.alarmAtMs === undefined) this.alarmAtMs = await this.ctx.storage.getAlarm();
		if (this.alarmAtMs !== null && this.alarmAtMs <= atMs) return;
		await this.ctx.storage.setAlarm(atMs);
		this.alarmAtMs = atMs;
	}

	/**
	 * Stores the route unless its model belongs to another owner, its key to
	 * another group, it would take its publisher key over the cap, or its
	 * sequence is not above the stored route's or tombstone's. A refused
	 * write changes nothing.
	 */
	async put(req: PutRequest): Promise<PutResult> {
		const { route, nowMs } = req;
		const result = this.ctx.storage.transactionSync((): PutResult => {
			const key = routeKey(route);
			const claimed = this.sql.exec<{ owner: string }>("SELECT owner FROM model_owners WHERE model = ?", route.model).toArray()[0]?.owner;
			const modelOwner = req.configuredOwner ?? claimed ?? route.owner;
			if (modelOwner !== route.owner) return { ok: false, code: "model_owned", owner: modelOwner };

			const stored = this.storedRoute(key);
			const tomb = stored ? undefined : this.tombstone(key, nowMs);
			const prior = stored ? { kind: "route" as const, ...stored } : tomb ? { kind: "tombstone" as const, ...tomb } : null;
			if (prior && prior.grp !== route.group) return { ok: false, code: "route_owned", group: prior.grp, kind: prior.kind };
			// A route this key already holds is an update and always passes; any other is new to this key.
			if (stored?.key_id !== route.keyId && this.liveRoutes(route.keyId, nowMs).length >= req.maxRoutesPerKey) {
				return { ok: false, code: "route_limit_exceeded", cap: req.maxRoutesPerKey };
			}
			if (prior && route.sequence <= prior.sequence) return { ok: false, code: "stale_sequence", stored: prior.sequence, kind: prior.kind };

			this.sql.exec(
				`INSERT INTO route_entries
					(key, namespace, name, region, model, edge_model, key_id, grp, sequence, ready_replicas, received_at_ms, ttl_seconds, lapsed_at_ms, route)
				 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)
				 ON CONFLICT(key) DO UPDATE SET model = excluded.model, edge_model = excluded.edge_model, key_id = excluded.key_id,
				   grp = excluded.grp, sequence = excluded.sequence, ready_replicas = excluded.ready_replicas,
				   received_at_ms = excluded.received_at_ms, ttl_seconds = excluded.ttl_seconds, lapsed_at_ms = NULL, route = excluded.route`,
				key,
				route.namespace,
				route.name,
				route.region,
				route.model,
				route.edgeModel,
				route.keyId,
				route.group,
				route.sequence,
				route.readyReplicas,
				route.receivedAtMs,
				route.ttlSeconds,
				persisted(route),
			);
			if (tomb) this.sql.exec("DELETE FROM tombstones WHERE key = ?", key);
			// The claim follows the effective owner, so a model handed over with
			// BACKHAUL_MODEL_OWNERS stays handed over once that entry is removed.
			if (claimed !== route.owner) {
				this.sql.exec(
					"INSERT INTO model_owners (model, owner, claimed_at_ms) VALUES (?, ?, ?) ON CONFLICT(model) DO UPDATE SET owner = excluded.owner, claimed_at_ms = excluded.claimed_at_ms",
					route.model,
					route.owner,
					nowMs,
				);
			}
			const touched: Touched[] = [{ model: route.model, edgeModel: route.edgeModel }];
			if (stored) touched.push({ model: stored.model, edgeModel: stored.edge_model });
			return { ok: true, route, touched };
		});
		if (result.ok) {
			this.mutations++;
			await this.armBy(expiresAtMs({ ...route, leaseRenewedAtMs: null }) + EXPIRED_ROUTE_RETENTION_MS);
		}
		return result;
	}

	/**
	 * Withdraws the route and leaves a tombstone of `sequence`. Idempotent: an
	 * absent key gets a tombstone, an already tombstoned key answers ok
	 * whatever the sequence (a higher one from the same group raises the
	 * tombstone's, so a write delayed in between cannot land).
	 */
	async delete(req: DeleteRequest): Promise<DeleteResult> {
		const { sequence, group, keyId, nowMs } = req;
		const result = this.ctx.storage.transactionSync((): DeleteResult => {
			const key = routeKey(req.key);
			const stored = this.storedRoute(key);
			const tombstone = () => this.writeTombstone(key, { sequence, grp: group, key_id: keyId, deleted_at_ms: nowMs });
			if (stored) {
				if (stored.grp !== group) return { ok: false, code: "route_owned", group: stored.grp, kind: "route" };
				if (sequence <= stored.sequence) return { ok: false, code: "stale_sequence", stored: stored.sequence, kind: "route" };
				this.sql.exec("DELETE FROM route_entries WHERE key = ?", key);
				tombstone();
				return { ok: true, outcome: "deleted", touched: [{ model: stored.model, edgeModel: stored.edge_model }] };
			}
			const tomb = this.tombstone(key, nowMs);
			if (tomb) {
				if (tomb.grp === group && sequence > tomb.sequence) tombstone();
				return { ok: true, outcome: "already_deleted", touched: [] };
			}
			tombstone();
			return { ok: true, outcome: "tombstoned", touched: [] };
		});
		if (result.ok) {
			this.mutations++;
			await this.armBy(nowMs + TOMBSTONE_TTL_MS);
		}
		return result;
	}

	/**
	 * Renews `keyId`'s lease: every route it last wrote now expires
	 * `ttlSeconds` after this renewal at the earliest. Routes already dead
	 * under the previous renewal are fixed at their expiry first, so the
	 * renewal revives none. Answers the Worker's count and digest of the
	 * key's live routes.
	 */
	async renew(req: RenewRequest): Promise<RenewResult> {
		const { keyId, nowMs } = req;
		const result = this.ctx.storage.transactionSync(() => {
			const stored = this.sql.exec<{ sequence: number; renewed_at_ms: number }>("SELECT sequence, renewed_at_ms FROM leases WHERE key_id = ?", keyId).toArray()[0];
			if (stored && req.sequence <= stored.sequence) return { ok: false as const, code: "stale_sequence" as const, stored: stored.sequence, kind: "lease" as const };
			// Never backwards: isolates' clocks may differ by a little.
			const renewedAtMs = Math.max(stored?.renewed_at_ms ?? 0, nowMs);
			// Routes already dead under the stored lease keep the expiry they died at.
			const rows = this.sql.exec<ExpiryRow & { key: string }>(`SELECT r.key, ${EXPIRY_COLUMNS} FROM ${FROM_ROUTES} WHERE r.key_id = ? AND r.lapsed_at_ms IS NULL`, keyId);
			for (const row of rows.toArray()) {
				const diedAtMs = rowExpiresAtMs(row);
				if (diedAtMs <= nowMs) this.sql.exec("UPDATE route_entries SET lapsed_at_ms = ? WHERE key = ?", diedAtMs, row.key);
			}
			this.sql.exec(
				`INSERT INTO leases (key_id, grp, sequence, renewed_at_ms) VALUES (?, ?, ?, ?)
				 ON CONFLICT(key_id) DO UPDATE SET grp = excluded.grp, sequence = excluded.sequence, renewed_at_ms = excluded.renewed_at_ms`,
				keyId,
				req.group,
				req.sequence,
				renewedAtMs,
			);
			return { ok: true as const, renewedAtMs, held: this.liveRoutes(keyId, nowMs) };
		});
		if (!result.ok) return result;
		await this.armBy(result.renewedAtMs + LEASE_RETENTION_MS);
		return {
			ok: true,
			lease: { keyId, sequence: req.sequence, renewedAtMs: result.renewedAtMs, routes: result.held.length, digest: await leaseDigest(result.held) },
		};
	}

	/** The stored route (token included) and the live tombstone at `key`. */
	get(k: RouteKey, nowMs: number): { route: StoredRoute | null; tombstone: Tombstone | null } {
		const key = routeKey(k);
		const row = this.sql.exec<JsonRow>(`SELECT r.route, r.lapsed_at_ms, l.renewed_at_ms FROM ${FROM_ROUTES} WHERE r.key = ?`, key).toArray()[0];
		const tomb = this.tombstone(key, nowMs);
		return {
			route: row ? fromJsonRow(row) : null,
			tombstone: tomb
				? { sequence: tomb.sequence, group: tomb.grp, keyId: tomb.key_id, deletedAtMs: tomb.deleted_at_ms, expiresAtMs: tomb.expires_at_ms }
				: null,
		};
	}

	/** A page of stored routes (tokens included), expired ones too, in key order; `next`: the key to continue after, when more may follow. */
	list(req: ListRequest): { routes: StoredRoute[]; next: string | null } {
		const limit = Math.max(1, Math.min(LIST_PAGE_MAX, Math.floor(req.limit)));
		const ns = req.namespaces === null ? null : JSON.stringify(req.namespaces);
		const rg = req.regions === null ? null : JSON.stringify(req.regions);
		const rows = this.sql
			.exec<JsonRow & { key: string }>(
				`SELECT r.key, r.route, r.lapsed_at_ms, l.renewed_at_ms FROM ${FROM_ROUTES}
				 WHERE r.key > ?
				   AND (? IS NULL OR r.namespace IN (SELECT value FROM json_each(?)))
				   AND (? IS NULL OR r.region IN (SELECT value FROM json_each(?)))
				 ORDER BY r.key LIMIT ?`,
				req.after,
				ns,
				ns,
				rg,
				rg,
				limit + 1,
			)
			.toArray();
		const more = rows.length > limit;
		const page = more ? rows.slice(0, limit) : rows;
		return { routes: page.map(fromJsonRow), next: more ? page[page.length - 1]!.key : null };
	}

	/** One model's routes (tokens included), expired ones too: what the request path reads on a cache miss. */
	modelRoutes(model: string): ModelRoutes {
		const cursor = this.sql.exec<JsonRow>(`SELECT r.route, r.lapsed_at_ms, l.renewed_at_ms FROM ${FROM_ROUTES} WHERE r.model = ?`, model);
		const routes = cursor.toArray().map(fromJsonRow);
		let rowsRead = cursor.rowsRead;
		let edgeServed = false;
		if (routes.length === 0) {
			const edge = this.sql.exec("SELECT 1 FROM route_entries WHERE edge_model = ? LIMIT 1", model);
			edgeServed = edge.toArray().length > 0;
			rowsRead += edge.rowsRead;
		}
		return { routes, edgeServed, rowsRead };
	}

	/** Every route's liveness, model and edge model, without JSON or token (`/v1/models`). */
	catalog(): RouteSummary[] {
		return this.sql
			.exec<SummaryRow>(`SELECT ${SUMMARY_COLUMNS} FROM ${FROM_ROUTES}`)
			.toArray()
			.map((r) => ({
				namespace: r.namespace,
				name: r.name,
				region: r.region,
				model: r.model,
				edgeModel: r.edge_model,
				readyReplicas: r.ready_replicas,
				receivedAtMs: r.received_at_ms,
				ttlSeconds: r.ttl_seconds,
				leaseRenewedAtMs: r.renewed_at_ms,
				lapsedAtMs: r.lapsed_at_ms,
			}));
	}

	/**
	 * The fleet view of one publisher group (fleet.ts): every route of every
	 * model whose owner (BACKHAUL_MODEL_OWNERS, else the claim) is in the
	 * group. `notModified` when the caller holds the current version; the
	 * version is cached until a write or the next expiry, so a poll that
	 * finds nothing changed reads no rows.
	 */
	async fleet(req: FleetRequest): Promise<{ notModified: true; version: string } | ({ notModified: false } & FleetView)> {
		const { group, nowMs } = req;
		const configured = Object.entries(req.configuredOwners);
		const include = configured.filter(([, owner]) => owner.startsWith(`${group}/`)).map(([m]) => m);
		const exclude = new Set(configured.filter(([, owner]) => !owner.startsWith(`${group}/`)).map(([m]) => m));
		const cacheKey = `${group}\n${include.join("\n")}\n\n${[...exclude].join("\n")}`;
		const cached = this.fleetVersions.get(cacheKey);
		const fresh = cached && cached.mutations === this.mutations && nowMs >= cached.computedAtMs && nowMs < cached.validUntilMs;
		const held = (v: string) => req.ifNoneMatch.includes(v) || req.ifNoneMatch.includes("*");
		if (fresh && held(cached.version)) return { notModified: true, version: cached.version };

		const { rows, more } = this.fleetRows(group, include, exclude);
		const truncated = more || rows.length > FLEET_MAX_ROUTES;
		const shown = truncated ? rows.slice(0, FLEET_MAX_ROUTES) : rows;
		const { version, validUntilMs } = await fleetVersion(shown, truncated, nowMs);
		if (this.fleetVersions.size >= 64) this.fleetVersions.clear();
		this.fleetVersions.set(cacheKey, { mutations: this.mutations, computedAtMs: nowMs, validUntilMs, version });
		if (held(version)) return { notModified: true, version };
		return { notModified: false, version, models: fleetModels(shown, nowMs), ...(truncated ? { truncated: true as const } : {}) };
	}

	/** The group's rows, sorted; `more`: the claimed models hold more than FLEET_MAX_ROUTES. */
	private fleetRows(group: string, include: string[], exclude: ReadonlySet<string>): { rows: FleetRow[]; more: boolean } {
		const toRow = (r: SummaryRow): FleetRow => ({
			model: r.model,
			namespace: r.namespace,
			name: r.name,
			region: r.region,
			keyId: r.key_id,
			readyReplicas: r.ready_replicas,
			receivedAtMs: r.received_at_ms,
			ttlSeconds: r.ttl_seconds,
			leaseRenewedAtMs: r.renewed_at_ms,
			lapsedAtMs: r.lapsed_at_ms,
		});
		// Owners are "{group}/{namespace}" and a group has no "/": the claims of
		// `group` are the owners in ["{group}/", "{group}0"), an index range.
		const claimed = this.sql
			.exec<SummaryRow>(
				`SELECT ${SUMMARY_COLUMNS} FROM ${FROM_ROUTES}
				 WHERE r.model IN (SELECT model FROM model_owners WHERE owner >= ? AND owner < ?) ORDER BY r.model, r.key LIMIT ?`,
				`${group}/`,
				`${group}0`,
				FLEET_MAX_ROUTES + 1,
			)
			.toArray();
		const rows = claimed.filter((r) => !exclude.has(r.model)).map(toRow);
		const seen = new Set(rows.map((r) => r.model));
		for (const model of include) {
			if (seen.has(model)) continue;
			for (const r of this.sql.exec<SummaryRow>(`SELECT ${SUMMARY_COLUMNS} FROM ${FROM_ROUTES} WHERE r.model = ? LIMIT ?`, model, FLEET_MAX_ROUTES + 1)) {
				rows.push(toRow(r));
			}
		}
		return { rows: sortRows(rows), more: claimed.length > FLEET_MAX_ROUTES };
	}

	/**
	 * Deletes, up to SWEEP_BATCH of each: routes expired more than
	 * EXPIRED_ROUTE_RETENTION_MS ago (each leaves a tombstone of its sequence
	 * and group, so a replayed PUT cannot bring it back), expired tombstones,
	 * and leases whose key holds no route and that were last renewed more
	 * than LEASE_RETENTION_MS ago. Then re-arms: at once when a batch was
	 * full, else at the earliest pending deletion.
	 */
	override async alarm(): Promise<void> {
		const nowMs = Date.now();
		this.alarmAtMs = null;
		const { more, deleted } = this.ctx.storage.transactionSync(() => this.sweep(nowMs));
		if (deleted > 0) this.mutations++;
		// More due: again at once. Otherwise at the next deletion, and never
		// in a tight loop (a next time already past would mean the SQL and
		// expiresAtMs disagree about a row; it is retried each second).
		const next = more ? nowMs : this.nextSweepAtMs();
		if (next !== null) await this.armBy(more ? nowMs : Math.max(next, nowMs + 1000));
	}

	private sweep(nowMs: number): { more: boolean; deleted: number } {
		const routes = this.sql
			.exec<ExpiryRow & { key: string; sequence: number; grp: string; key_id: string }>(
				`SELECT r.key, r.sequence, r.grp, r.key_id, ${EXPIRY_COLUMNS} FROM ${FROM_ROUTES} WHERE ${EXPIRY_SQL} + ? <= ? LIMIT ?`,
				EXPIRED_ROUTE_RETENTION_MS,
				nowMs,
				SWEEP_BATCH,
			)
			.toArray()
			.filter((r) => rowExpiresAtMs(r) + EXPIRED_ROUTE_RETENTION_MS <= nowMs);
		for (const r of routes) {
			this.sql.exec("DELETE FROM route_entries WHERE key = ?", r.key);
			this.writeTombstone(r.key, { sequence: r.sequence, grp: r.grp, key_id: r.key_id, deleted_at_ms: nowMs });
		}
		const tombstones = this.sql.exec(
			"DELETE FROM tombstones WHERE key IN (SELECT key FROM tombstones WHERE expires_at_ms <= ? LIMIT ?)",
			nowMs,
			SWEEP_BATCH,
		).rowsWritten;
		const leases = this.sql.exec(
			`DELETE FROM leases WHERE key_id IN (SELECT key_id FROM leases WHERE renewed_at_ms + ? <= ?
			   AND NOT EXISTS (SELECT 1 FROM route_entries WHERE route_entries.key_id = leases.key_id) LIMIT ?)`,
			LEASE_RETENTION_MS,
			nowMs,
			SWEEP_BATCH,
		).rowsWritten;
		const more = routes.length === SWEEP_BATCH || tombstones >= SWEEP_BATCH || leases >= SWEEP_BATCH;
		return { more, deleted: routes.length + tombstones + leases };
	}

	/** The earliest pending deletion, or null when nothing is stored. One scan of the routes' columns, once per alarm run. */
	private nextSweepAtMs(): number | null {
		const route = this.sql.exec<{ t: number | null }>(`SELECT MIN(${EXPIRY_SQL}) AS t FROM ${FROM_ROUTES}`).one().t;
		const tomb = this.sql.exec<{ t: number | null }>("SELECT MIN(expires_at_ms) AS t FROM tombstones").one().t;
		const lease = this.sql
			.exec<{ t: number | null }>(
				"SELECT MIN(renewed_at_ms) AS t FROM leases WHERE NOT EXISTS (SELECT 1 FROM route_entries WHERE route_entries.key_id = leases.key_id)",
			)
			.one().t;
		const times = [route === null ? null : route + EXPIRED_ROUTE_RETENTION_MS, tomb, lease === null ? null : lease + LEASE_RETENTION_MS].filter(
			(t): t is number => t !== null,
		);
		return times.length === 0 ? null : Math.min(...times);
	}
}

export function routeTable(env: Env): DurableObjectStub<RouteTable> {
	return env.ROUTES.get(env.ROUTES.idFromName("routes"));
}

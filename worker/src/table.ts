/**
 * The route table: one SQLite-backed Durable Object holds every route, every
 * tombstone and every model's owner, so writes are serialized and each
 * write's ownership and sequence checks and the write itself are one
 * transaction (docs/publication.md, "Ordering", "Ownership"). It survives
 * restarts (`wrangler dev --persist-to`). Request paths read the routes
 * through the isolate's copy: at most one read per isolate per
 * ROUTE_CACHE_TTL_MS, and a write through this isolate refreshes this
 * isolate's copy at once.
 */
import { DurableObject } from "cloudflare:workers";
import { routeKey, type RouteKey, type StoredRoute } from "./route";

/** How long a tombstone outlives its DELETE: the longest ttlSeconds, so no route it replaced can still be live. */
export const TOMBSTONE_TTL_MS = 3600 * 1000;

export interface Tombstone {
	sequence: number;
	group: string;
	keyId: string;
	deletedAtMs: number;
	expiresAtMs: number;
}

export type Refusal =
	| { ok: false; code: "model_owned"; owner: string }
	| { ok: false; code: "route_owned"; group: string; kind: "route" | "tombstone" }
	| { ok: false; code: "stale_sequence"; stored: number; kind: "route" | "tombstone" };

export type PutResult = { ok: true; route: StoredRoute } | Refusal;
export type DeleteResult = { ok: true; outcome: "deleted" | "tombstoned" | "already_deleted" } | Exclude<Refusal, { code: "model_owned" }>;

export interface PutRequest {
	/** The route with what the Worker adds; `owner` must be `{group}/{namespace}` of the writer. */
	route: StoredRoute;
	/** BACKHAUL_MODEL_OWNERS' owner of the route's model, if it names one. */
	configuredOwner: string | null;
	nowMs: number;
}

export interface DeleteRequest {
	key: RouteKey;
	sequence: number;
	group: string;
	keyId: string;
	nowMs: number;
}

interface RouteRow extends Record<string, SqlStorageValue> {
	sequence: number;
	grp: string;
	route: string;
}
interface TombstoneRow extends Record<string, SqlStorageValue> {
	sequence: number;
	grp: string;
	key_id: string;
	deleted_at_ms: number;
	expires_at_ms: number;
}

export class RouteTable extends DurableObject<Env> {
	private readonly sql: SqlStorage;

	constructor(ctx: DurableObjectState, env: Env) {
		super(ctx, env);
		this.sql = ctx.storage.sql;
		ctx.storage.transactionSync(() => {
			// The v1 table (HMAC era) held routes without sequence, owner or
			// token; none of them can be served under v2.
			this.sql.exec("DROP TABLE IF EXISTS routes");
			this.sql.exec(
				`CREATE TABLE IF NOT EXISTS published_routes (
					key TEXT PRIMARY KEY,
					sequence INTEGER NOT NULL,
					grp TEXT NOT NULL,
					route TEXT NOT NULL
				)`,
			);
			this.sql.exec(
				`CREATE TABLE IF NOT EXISTS tombstones (
					key TEXT PRIMARY KEY,
					sequence INTEGER NOT NULL,
					grp TEXT NOT NULL,
					key_id TEXT NOT NULL,
					deleted_at_ms INTEGER NOT NULL,
					expires_at_ms INTEGER NOT NULL
				)`,
			);
			this.sql.exec(
				`CREATE TABLE IF NOT EXISTS model_owners (
					model TEXT PRIMARY KEY,
					owner TEXT NOT NULL,
					claimed_at_ms INTEGER NOT NULL
				)`,
			);
		});
	}

	private storedRoute(key: string): RouteRow | undefined {
		return this.sql.exec<RouteRow>("SELECT sequence, grp, route FROM published_routes WHERE key = ?", key).toArray()[0];
	}

	/** The live tombstone at `key`; expired ones are removed on the way. */
	private tombstone(key: string, nowMs: number): TombstoneRow | undefined {
		this.sql.exec("DELETE FROM tombstones WHERE expires_at_ms <= ?", nowMs);
		return this.sql
			.exec<TombstoneRow>("SELECT sequence, grp, key_id, deleted_at_ms, expires_at_ms FROM tombstones WHERE key = ?", key)
			.toArray()[0];
	}

	/**
	 * Stores the route unless its model belongs to another owner, its key to
	 * another group, or its sequence is not above the stored route's or
	 * tombstone's. A refused write changes nothing.
	 */
	put(req: PutRequest): PutResult {
		const { route, nowMs } = req;
		return this.ctx.storage.transactionSync((): PutResult => {
			const key = routeKey(route);
			const claimed = this.sql.exec<{ owner: string }>("SELECT owner FROM model_owners WHERE model = ?", route.model).toArray()[0]?.owner;
			const modelOwner = req.configuredOwner ?? claimed ?? route.owner;
			if (modelOwner !== route.owner) return { ok: false, code: "model_owned", owner: modelOwner };

			const stored = this.storedRoute(key);
			const tomb = stored ? undefined : this.tombstone(key, nowMs);
			const prior = stored ? { kind: "route" as const, ...stored } : tomb ? { kind: "tombstone" as const, ...tomb } : null;
			if (prior && prior.grp !== route.group) return { ok: false, code: "route_owned", group: prior.grp, kind: prior.kind };
			if (prior && route.sequence <= prior.sequence) return { ok: false, code: "stale_sequence", stored: prior.sequence, kind: prior.kind };

			this.sql.exec(
				`INSERT INTO published_routes (key, sequence, grp, route) VALUES (?, ?, ?, ?)
				 ON CONFLICT(key) DO UPDATE SET sequence = excluded.sequence, grp = excluded.grp, route = excluded.route`,
				key,
				route.sequence,
				route.group,
				JSON.stringify(route),
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
			return { ok: true, route };
		});
	}

	/**
	 * Withdraws the route and leaves a tombstone of `sequence`. Idempotent: an
	 * absent key gets a tombstone, an already tombstoned key answers ok
	 * whatever the sequence (a higher one from the same group raises the
	 * tombstone's, so a write delayed in between cannot land).
	 */
	delete(req: DeleteRequest): DeleteResult {
		const { sequence, group, keyId, nowMs } = req;
		return this.ctx.storage.transactionSync((): DeleteResult => {
			const key = routeKey(req.key);
			const stored = this.storedRoute(key);
			const tombstone = () =>
				this.sql.exec(
					`INSERT INTO tombstones (key, sequence, grp, key_id, deleted_at_ms, expires_at_ms) VALUES (?, ?, ?, ?, ?, ?)
					 ON CONFLICT(key) DO UPDATE SET sequence = excluded.sequence, grp = excluded.grp, key_id = excluded.key_id,
					   deleted_at_ms = excluded.deleted_at_ms, expires_at_ms = excluded.expires_at_ms`,
					key,
					sequence,
					group,
					keyId,
					nowMs,
					nowMs + TOMBSTONE_TTL_MS,
				);
			if (stored) {
				if (stored.grp !== group) return { ok: false, code: "route_owned", group: stored.grp, kind: "route" };
				if (sequence <= stored.sequence) return { ok: false, code: "stale_sequence", stored: stored.sequence, kind: "route" };
				this.sql.exec("DELETE FROM published_routes WHERE key = ?", key);
				tombstone();
				return { ok: true, outcome: "deleted" };
			}
			const tomb = this.tombstone(key, nowMs);
			if (tomb) {
				if (tomb.grp === group && sequence > tomb.sequence) tombstone();
				return { ok: true, outcome: "already_deleted" };
			}
			tombstone();
			return { ok: true, outcome: "tombstoned" };
		});
	}

	/** The stored route (token included) and the live tombstone at `key`. */
	get(k: RouteKey, nowMs: number): { route: StoredRoute | null; tombstone: Tombstone | null } {
		const key = routeKey(k);
		const stored = this.storedRoute(key);
		const tomb = this.sql
			.exec<TombstoneRow>("SELECT sequence, grp, key_id, deleted_at_ms, expires_at_ms FROM tombstones WHERE key = ? AND expires_at_ms > ?", key, nowMs)
			.toArray()[0];
		return {
			route: stored ? (JSON.parse(stored.route) as StoredRoute) : null,
			tombstone: tomb
				? { sequence: tomb.sequence, group: tomb.grp, keyId: tomb.key_id, deletedAtMs: tomb.deleted_at_ms, expiresAtMs: tomb.expires_at_ms }
				: null,
		};
	}

	/** Every stored route (token included), expired ones too. */
	list(): StoredRoute[] {
		return this.sql
			.exec<{ route: string }>("SELECT route FROM published_routes ORDER BY key")
			.toArray()
			.map((row) => JSON.parse(row.route) as StoredRoute);
	}
}

export function routeTable(env: Env): DurableObjectStub<RouteTable> {
	return env.ROUTES.get(env.ROUTES.idFromName("routes"));
}

/** The isolate's copy of the table. */
let cached: { routes: StoredRoute[]; readAtMs: number } | null = null;

export function cacheTtlMs(env: Env): number {
	const v = Number(env.ROUTE_CACHE_TTL_MS);
	return Number.isFinite(v) && v >= 0 ? Math.min(v, 10_000) : 5_000;
}

/**
 * Routes for a request, each with what ranking needs (`receivedAtMs`,
 * `ttlSeconds`) and `upstreamToken` for proxy.ts: from the isolate's copy
 * while fresh, else one Durable Object read.
 */
export async function loadRoutes(env: Env, nowMs = Date.now()): Promise<StoredRoute[]> {
	if (cached && nowMs - cached.readAtMs < cacheTtlMs(env)) return cached.routes;
	// No promise is shared between requests: the Workers runtime ties I/O to
	// the request that started it, so each stale request reads for itself.
	const routes = (await routeTable(env).list()) as StoredRoute[];
	cached = { routes, readAtMs: nowMs };
	return routes;
}

/** After a write through this isolate: drop the copy so the next request sees it. */
export function invalidateRoutes(): void {
	cached = null;
}

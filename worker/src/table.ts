/**
 * The route table: one SQLite-backed Durable Object holds every route, so
 * writes are serialized (the 409 check and the write are one step) and the
 * table survives restarts (`wrangler dev --persist-to`). Request paths read it
 * through `RouteCache`: at most one read per isolate per ROUTE_CACHE_TTL_MS,
 * and a write through this isolate refreshes this isolate's copy at once.
 */
import { DurableObject } from "cloudflare:workers";
import { publishedAtMs, routeKey, type Route, type RouteKey } from "./route";

export type PutResult = { ok: true; route: Route } | { ok: false; storedPublishedAt: string };

export class RouteTable extends DurableObject<Env> {
	private readonly sql: SqlStorage;

	constructor(ctx: DurableObjectState, env: Env) {
		super(ctx, env);
		this.sql = ctx.storage.sql;
		this.sql.exec(
			`CREATE TABLE IF NOT EXISTS routes (
				key TEXT PRIMARY KEY,
				published_at_ms INTEGER NOT NULL,
				route TEXT NOT NULL
			)`,
		);
	}

	/** Stores the route unless the stored one was published later (then nothing changes). */
	put(route: Route): PutResult {
		const key = routeKey(route);
		const stored = this.sql.exec<{ route: string; published_at_ms: number }>("SELECT route, published_at_ms FROM routes WHERE key = ?", key).toArray()[0];
		if (stored && publishedAtMs(route) < stored.published_at_ms) {
			return { ok: false, storedPublishedAt: (JSON.parse(stored.route) as Route).publishedAt };
		}
		this.sql.exec(
			"INSERT INTO routes (key, published_at_ms, route) VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE SET published_at_ms = excluded.published_at_ms, route = excluded.route",
			key,
			publishedAtMs(route),
			JSON.stringify(route),
		);
		return { ok: true, route };
	}

	delete(k: RouteKey): void {
		this.sql.exec("DELETE FROM routes WHERE key = ?", routeKey(k));
	}

	list(): Route[] {
		return this.sql
			.exec<{ route: string }>("SELECT route FROM routes ORDER BY key")
			.toArray()
			.map((row) => JSON.parse(row.route) as Route);
	}
}

export function routeTable(env: Env): DurableObjectStub<RouteTable> {
	return env.ROUTES.get(env.ROUTES.idFromName("routes"));
}

/** The isolate's copy of the table. */
let cached: { routes: Route[]; readAtMs: number } | null = null;

export function cacheTtlMs(env: Env): number {
	const v = Number(env.ROUTE_CACHE_TTL_MS);
	return Number.isFinite(v) && v >= 0 ? Math.min(v, 10_000) : 5_000;
}

/** Routes for a request: from the isolate's copy while fresh, else one Durable Object read. */
export async function loadRoutes(env: Env, nowMs = Date.now()): Promise<Route[]> {
	if (cached && nowMs - cached.readAtMs < cacheTtlMs(env)) return cached.routes;
	// No promise is shared between requests: the Workers runtime ties I/O to
	// the request that started it, so each stale request reads for itself.
	const routes = (await routeTable(env).list()) as Route[];
	cached = { routes, readAtMs: nowMs };
	return routes;
}

/** After a write through this isolate: drop the copy so the next request sees it. */
export function invalidateRoutes(): void {
	cached = null;
}

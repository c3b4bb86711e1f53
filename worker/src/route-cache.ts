/**
 * The isolate's copies of the route table, per model: a request reads its
 * model's routes from this isolate's copy while it is younger than
 * ROUTE_CACHE_TTL_MS, else with one indexed Durable Object read of that
 * model alone (table.ts `modelRoutes`), never the whole fleet's table. A
 * write through this isolate drops the copies of the models it touched, so
 * the next request here sees it; other isolates see it within the TTL.
 * `/v1/models` reads the catalogue (every route's liveness and model names,
 * without JSON or token) the same way.
 *
 * A renewal through this isolate drops nothing: it only pushes expiries
 * later, and a copy at most ROUTE_CACHE_TTL_MS (≤ 10 s) old cannot show a
 * healthily renewed route as expired (renewals come every ttlSeconds / 3,
 * at least 3.3 s apart, so the copy's expiry is at least 2/3 ttl after its
 * last renewal).
 */
import type { StoredRoute } from "./route";
import { routeTable, type RouteSummary } from "./table";

/** The most models one isolate keeps copies of; over it the oldest copy goes. */
export const MAX_CACHED_MODELS = 2048;

export interface ModelCopy {
	/** The model's routes (tokens included, for proxy.ts), expired ones too. */
	routes: StoredRoute[];
	/** Whether some route names the model as its edge model (looked up only when it has no routes). */
	edgeServed: boolean;
}

/** Copies by model; a Map keeps insertion order, so the first key is the oldest copy. */
const models = new Map<string, ModelCopy & { readAtMs: number }>();
let catalogCopy: { routes: RouteSummary[]; readAtMs: number } | null = null;

export function cacheTtlMs(env: Env): number {
	const v = Number(env.ROUTE_CACHE_TTL_MS);
	return Number.isFinite(v) && v >= 0 ? Math.min(v, 10_000) : 5_000;
}

/** `model`'s routes for a request: from this isolate's copy while fresh, else one Durable Object read of that model. */
export async function loadModel(env: Env, model: string, nowMs = Date.now()): Promise<ModelCopy> {
	const copy = models.get(model);
	if (copy && nowMs - copy.readAtMs < cacheTtlMs(env)) return copy;
	// No promise is shared between requests: the Workers runtime ties I/O to
	// the request that started it, so each stale request reads for itself.
	const { routes, edgeServed } = await routeTable(env).modelRoutes(model);
	const fresh = { routes: routes as StoredRoute[], edgeServed, readAtMs: nowMs };
	models.delete(model);
	if (models.size >= MAX_CACHED_MODELS) models.delete(models.keys().next().value!);
	models.set(model, fresh);
	return fresh;
}

/** Every route's summary, for `/v1/models`: from this isolate's copy while fresh. */
export async function loadCatalog(env: Env, nowMs = Date.now()): Promise<RouteSummary[]> {
	if (catalogCopy && nowMs - catalogCopy.readAtMs < cacheTtlMs(env)) return catalogCopy.routes;
	const routes = (await routeTable(env).catalog()) as RouteSummary[];
	catalogCopy = { routes, readAtMs: nowMs };
	return routes;
}

/** After a write through this isolate: drop the copies of the models (and edge models) it touched, and the catalogue. */
export function invalidateModels(touched: readonly { model: string; edgeModel: string | null }[]): void {
	for (const t of touched) {
		models.delete(t.model);
		if (t.edgeModel !== null) models.delete(t.edgeModel);
	}
	catalogCopy = null;
}

/** Drops every copy (tests). */
export function invalidateAll(): void {
	models.clear();
	catalogCopy = null;
}

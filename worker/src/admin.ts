/**
 * The admin API of docs/publication.md: signed PUT/DELETE of one route and a
 * signed GET of the table. Every check runs before anything is written.
 */
import { ApiError, badRequest } from "./errors";
import { isExpired, isK8sName, validateRoute, ValidationError, type Route } from "./route";
import { readBodyCapped } from "./request";
import { verifySignature } from "./signature";
import { invalidateRoutes, routeTable } from "./table";

export const ADMIN_PREFIX = "/admin/v1/routes";
export const ADMIN_BODY_LIMIT = 64 * 1024;

const unauthorized = (message: string) => new ApiError(401, "authentication_error", "invalid_signature", message);

export async function handleAdmin(request: Request, env: Env, url: URL, nowMs = Date.now()): Promise<Response> {
	const path = url.pathname;
	const rest = path === ADMIN_PREFIX ? [] : path.slice(ADMIN_PREFIX.length + 1).split("/");
	const isTable = rest.length === 0;
	const isRoute = rest.length === 3 && path.startsWith(`${ADMIN_PREFIX}/`);
	if (!isTable && !isRoute) throw new ApiError(404, "not_found_error", "not_found", `No admin endpoint at ${path}.`);
	const allowed = isTable ? ["GET"] : ["PUT", "DELETE"];
	if (!allowed.includes(request.method)) {
		throw new ApiError(405, "invalid_request_error", "method_not_allowed", `${request.method} is not allowed on ${path}; use ${allowed.join(" or ")}.`, null, {
			allow: allowed.join(", "),
		});
	}

	const secret = env.BACKHAUL_PUBLISH_SECRET;
	if (!secret) throw new ApiError(503, "service_unavailable", "publish_secret_unset", "BACKHAUL_PUBLISH_SECRET is not configured on this Worker.");

	// Body first (bounded), since the signature covers it.
	const body = await readBodyCapped(request, ADMIN_BODY_LIMIT);

	const check = await verifySignature({
		secret,
		timestampHeader: request.headers.get("x-backhaul-timestamp"),
		signatureHeader: request.headers.get("x-backhaul-signature"),
		method: request.method,
		path,
		body,
		nowSeconds: Math.floor(nowMs / 1000),
	});
	if (!check.ok) throw unauthorized(check.reason);

	const table = routeTable(env);
	if (isTable) {
		const routes = (await table.list()) as Route[];
		return Response.json({ routes: routes.map((r) => (isExpired(r, nowMs) ? { ...r, expired: true } : r)) });
	}

	const [namespace, name, region] = rest.map(decodeURIComponent) as [string, string, string];
	for (const [field, v] of [["namespace", namespace], ["name", name], ["region", region]] as const) {
		if (!isK8sName(v)) throw badRequest(`path ${field}: must be a Kubernetes name`, field);
	}

	if (request.method === "DELETE") {
		await table.delete({ namespace, name, region });
		invalidateRoutes();
		return new Response(null, { status: 204 });
	}

	let raw: unknown;
	try {
		raw = JSON.parse(new TextDecoder("utf-8", { fatal: true, ignoreBOM: false }).decode(body));
	} catch {
		throw badRequest("body: not JSON", null, "invalid_json");
	}
	let route: Route;
	try {
		route = validateRoute(raw);
	} catch (e) {
		if (e instanceof ValidationError) throw badRequest(e.message, e.field, "invalid_route");
		throw e;
	}
	for (const [field, v] of [["namespace", namespace], ["name", name], ["region", region]] as const) {
		if (route[field] !== v) throw badRequest(`${field}: body has "${route[field]}" but the path has "${v}"`, field, "path_body_mismatch");
	}
	const result = await table.put(route);
	if (!result.ok) {
		throw new ApiError(
			409,
			"invalid_request_error",
			"stale_route",
			`publishedAt ${route.publishedAt} is older than the stored route's ${result.storedPublishedAt}.`,
			"publishedAt",
		);
	}
	invalidateRoutes();
	return Response.json({ route: result.route });
}

/**
 * The admin API of docs/publication.md: signed PUT, DELETE and GET of one
 * route and a signed GET of the table. The checks run in the contract's
 * order ("Checks, in order"), and a rejected write changes nothing: the
 * signature, body, clock and scope checks run here before the Durable Object
 * is asked; the ownership and sequence checks run in the Durable Object, in
 * one transaction with the write.
 *
 * No answer contains a route's `upstreamToken` (answers carry the stored
 * view, storedView in route.ts) and nothing here logs one.
 */
import { ApiError, badRequest } from "./errors";
import { hostAllowed, inScope, loadModelOwners, loadPublishers, type Publisher } from "./publishers";
import { readBodyCapped } from "./request";
import {
	BOUNDS,
	isK8sName,
	storedView,
	tokenFingerprint,
	validateRoute,
	ValidationError,
	type Route,
	type RouteKey,
	type StoredRoute,
} from "./route";
import { readSignatureHeaders, SIGNATURE_WINDOW_SECONDS, verifySignature } from "./signature";
import { invalidateRoutes, routeTable, type Refusal, type Tombstone } from "./table";

export const ADMIN_PREFIX = "/admin/v1/routes";
export const ADMIN_BODY_LIMIT = 64 * 1024;
/** `publishedAt` may be this far from the Worker's clock. */
export const CLOCK_SKEW_MS = 300 * 1000;

const unauthorized = (code: "invalid_signature" | "unknown_key", message: string) => new ApiError(401, "authentication_error", code, message);
const forbidden = (code: "out_of_scope" | "endpoint_not_allowed", message: string, param: string | null) =>
	new ApiError(403, "invalid_request_error", code, message, param);
const conflict = (code: Refusal["code"], message: string, param: string | null) => new ApiError(409, "invalid_request_error", code, message, param);

const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: false });

function parseJson(body: Uint8Array): unknown {
	try {
		return JSON.parse(utf8.decode(body));
	} catch {
		throw badRequest("body: not JSON", null, "invalid_json");
	}
}

/** The three Kubernetes names of a route path, or a 400. */
function pathKey(segments: string[]): RouteKey {
	const names: string[] = [];
	for (const [i, field] of (["namespace", "name", "region"] as const).entries()) {
		let v: string;
		try {
			v = decodeURIComponent(segments[i]!);
		} catch {
			v = segments[i]!;
		}
		if (!isK8sName(v)) throw badRequest(`path ${field}: must be a Kubernetes name`, field);
		names.push(v);
	}
	const [namespace, name, region] = names as [string, string, string];
	return { namespace, name, region };
}

/** 403 unless the key may write (or read) `namespace` and `region`. */
function checkScope(p: Publisher, k: { namespace: string; region: string }): void {
	if (!inScope(p.namespaces, k.namespace)) {
		throw forbidden("out_of_scope", `Key "${p.id}" may not publish in namespace "${k.namespace}".`, "namespace");
	}
	if (!inScope(p.regions, k.region)) throw forbidden("out_of_scope", `Key "${p.id}" may not publish in region "${k.region}".`, "region");
}

function refusal(r: Refusal, what: string): ApiError {
	switch (r.code) {
		case "model_owned":
			return conflict("model_owned", `The model ${what} is owned by ${r.owner}; only that owner may publish it.`, "model");
		case "route_owned":
			return conflict("route_owned", `The ${r.kind} at this key was written by publisher group "${r.group}".`, null);
		case "stale_sequence":
			return conflict("stale_sequence", `sequence must be above the stored ${r.kind}'s ${r.stored}.`, "sequence");
	}
}

export async function handleAdmin(request: Request, env: Env, url: URL, nowMs = Date.now()): Promise<Response> {
	const path = url.pathname;
	const rest = path === ADMIN_PREFIX ? [] : path.slice(ADMIN_PREFIX.length + 1).split("/");
	const isTable = rest.length === 0;
	const isRoute = rest.length === 3 && path.startsWith(`${ADMIN_PREFIX}/`);
	if (!isTable && !isRoute) throw new ApiError(404, "not_found_error", "not_found", `No admin endpoint at ${path}.`);
	const allowed = isTable ? ["GET"] : ["GET", "PUT", "DELETE"];
	if (!allowed.includes(request.method)) {
		throw new ApiError(405, "invalid_request_error", "method_not_allowed", `${request.method} is not allowed on ${path}; use ${allowed.join(", ")}.`, null, {
			allow: allowed.join(", "),
		});
	}

	// 503 until the publishers are configured, and whenever their (or the model owners') configuration is malformed.
	const publishers = await loadPublishers(env);
	const modelOwners = loadModelOwners(env);

	const headers = readSignatureHeaders(request.headers, Math.floor(nowMs / 1000));
	if (!headers.ok) throw unauthorized("invalid_signature", headers.reason);
	const publisher = publishers.get(headers.keyId);
	if (!publisher) throw unauthorized("unknown_key", `The key id "${headers.keyId}" is not one of this Worker's publishers.`);

	// The signature covers the body, so it is read (bounded) before the check.
	let body: Uint8Array;
	try {
		body = await readBodyCapped(request, ADMIN_BODY_LIMIT);
	} catch (e) {
		if (e instanceof ApiError && e.status === 413) {
			throw new ApiError(413, "invalid_request_error", "body_too_large", `The body is larger than ${ADMIN_BODY_LIMIT} bytes.`);
		}
		throw e;
	}
	const good = await verifySignature({ ...headers, publicKey: publisher.publicKey, method: request.method, path, body });
	if (!good) throw unauthorized("invalid_signature", "X-Backhaul-Signature is not this key's signature of the request");

	const table = routeTable(env);
	if (isTable) {
		const routes = (await table.list()) as StoredRoute[];
		const visible = routes.filter((r) => inScope(publisher.namespaces, r.namespace) && inScope(publisher.regions, r.region));
		return Response.json({ routes: visible.map((r) => storedView(r, nowMs)) });
	}

	const key = pathKey(rest);
	if (request.method === "GET") {
		checkScope(publisher, key);
		const { route, tombstone } = (await table.get(key, nowMs)) as { route: StoredRoute | null; tombstone: Tombstone | null };
		return Response.json({
			route: route ? storedView(route, nowMs) : null,
			tombstone: tombstone
				? { sequence: tombstone.sequence, deletedAt: new Date(tombstone.deletedAtMs).toISOString(), expiresAt: new Date(tombstone.expiresAtMs).toISOString() }
				: null,
		});
	}

	if (request.method === "DELETE") {
		const sequence = deleteSequence(parseJson(body));
		checkScope(publisher, key);
		const result = await table.delete({ key, sequence, group: publisher.group, keyId: publisher.id, nowMs });
		if (!result.ok) throw refusal(result, "");
		invalidateRoutes();
		return new Response(null, { status: 204 });
	}

	let route: Route;
	try {
		route = validateRoute(parseJson(body));
	} catch (e) {
		if (e instanceof ValidationError) throw badRequest(e.message, e.field, "invalid_route");
		throw e;
	}
	for (const field of ["namespace", "name", "region"] as const) {
		if (route[field] !== key[field]) throw badRequest(`${field}: body has "${route[field]}" but the path has "${key[field]}"`, field, "path_body_mismatch");
	}
	const skewMs = Date.parse(route.publishedAt) - nowMs;
	if (Math.abs(skewMs) > CLOCK_SKEW_MS) {
		throw badRequest(
			`publishedAt ${route.publishedAt} is ${Math.round(Math.abs(skewMs) / 1000)} s ${skewMs > 0 ? "ahead of" : "behind"} the Worker's clock (${new Date(nowMs).toISOString()}); at most ${SIGNATURE_WINDOW_SECONDS} s is accepted.`,
			"publishedAt",
			"clock_skew",
		);
	}
	checkScope(publisher, route);
	const host = new URL(route.endpoint).hostname;
	if (!hostAllowed(publisher.endpointHosts, host)) {
		throw forbidden("endpoint_not_allowed", `Key "${publisher.id}" may not point routes at host "${host}".`, "endpoint");
	}

	const owner = `${publisher.group}/${route.namespace}`;
	const stored: StoredRoute = {
		...route,
		receivedAtMs: nowMs,
		keyId: publisher.id,
		group: publisher.group,
		owner,
		upstreamTokenSha256: await tokenFingerprint(route.upstreamToken),
	};
	const configuredOwner = modelOwners.get(route.model) ?? null;
	const result = await table.put({ route: stored, configuredOwner, nowMs });
	if (!result.ok) throw refusal(result, `"${route.model}"`);
	invalidateRoutes();
	return Response.json({ route: storedView(stored) });
}

/** The DELETE body, `{"sequence": n}`. */
function deleteSequence(raw: unknown): number {
	if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw badRequest('body: must be {"sequence": <integer>}', null, "invalid_route");
	const v = (raw as Record<string, unknown>).sequence;
	const [min, max] = BOUNDS.sequence;
	if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
		throw badRequest(`sequence: must be an integer in [${min}, ${max}]`, "sequence", "invalid_route");
	}
	return v;
}

/**
 * The admin API of docs/publication.md: signed PUT, DELETE and GET of one
 * route, a signed GET of the table (a page at a time), the publisher key's
 * lease renewal and the fleet view of its group. The checks run in the contract's
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
import { parseIfNoneMatch } from "./fleet";
import { validateLease, type LeaseRequest } from "./lease";
import { invalidateModels } from "./route-cache";
import { LIST_PAGE_MAX, routeTable, type Refusal, type Tombstone } from "./table";
import { maxRoutesPerPublisher } from "./vars";

/** Everything under it is the admin API: the routes, the leases and the fleet view. */
export const ADMIN_ROOT = "/admin/v1";
export const ADMIN_PREFIX = `${ADMIN_ROOT}/routes`;
export const LEASE_PREFIX = `${ADMIN_ROOT}/leases`;
export const FLEET_PATH = `${ADMIN_ROOT}/fleet`;
export const ADMIN_BODY_LIMIT = 64 * 1024;
/** `publishedAt` may be this far from the Worker's clock. */
export const CLOCK_SKEW_MS = 300 * 1000;

const unauthorized = (code: "invalid_signature" | "unknown_key", message: string) => new ApiError(401, "authentication_error", code, message);
const forbidden = (code: "out_of_scope" | "endpoint_not_allowed" | "route_limit_exceeded", message: string, param: string | null) =>
	new ApiError(403, "invalid_request_error", code, message, param);
const conflict = (code: Exclude<Refusal["code"], "route_limit_exceeded">, message: string, param: string | null) => new ApiError(409, "invalid_request_error", code, message, param);

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
		case "route_limit_exceeded":
			return forbidden(
				"route_limit_exceeded",
				`This key already holds ${r.cap} live routes, the most MAX_ROUTES_PER_PUBLISHER allows; updates to them are accepted, a new route is not.`,
				null,
			);
		case "stale_sequence":
			return conflict("stale_sequence", `sequence must be above the stored ${r.kind}'s ${r.stored}.`, "sequence");
	}
}

type Endpoint = { kind: "table" } | { kind: "route"; segments: string[] } | { kind: "lease"; keyId: string } | { kind: "fleet" };

const METHODS: Record<Endpoint["kind"], string[]> = { table: ["GET"], route: ["GET", "PUT", "DELETE"], lease: ["PUT"], fleet: ["GET"] };

function endpointOf(path: string): Endpoint | null {
	if (path === ADMIN_PREFIX) return { kind: "table" };
	if (path === FLEET_PATH) return { kind: "fleet" };
	if (path.startsWith(`${ADMIN_PREFIX}/`)) {
		const segments = path.slice(ADMIN_PREFIX.length + 1).split("/");
		return segments.length === 3 ? { kind: "route", segments } : null;
	}
	if (path.startsWith(`${LEASE_PREFIX}/`)) {
		const segments = path.slice(LEASE_PREFIX.length + 1).split("/");
		if (segments.length !== 1) return null;
		try {
			return { kind: "lease", keyId: decodeURIComponent(segments[0]!) };
		} catch {
			return { kind: "lease", keyId: segments[0]! };
		}
	}
	return null;
}

/** A signed request that passed the configuration, signature and body-size checks. */
interface Signed {
	publisher: Publisher;
	modelOwners: ReadonlyMap<string, string>;
	body: Uint8Array;
}

export async function handleAdmin(request: Request, env: Env, url: URL, nowMs = Date.now()): Promise<Response> {
	const path = url.pathname;
	const endpoint = endpointOf(path);
	if (!endpoint) throw new ApiError(404, "not_found_error", "not_found", `No admin endpoint at ${path}.`);
	const allowed = METHODS[endpoint.kind];
	if (!allowed.includes(request.method)) {
		throw new ApiError(405, "invalid_request_error", "method_not_allowed", `${request.method} is not allowed on ${path}; use ${allowed.join(", ")}.`, null, {
			allow: allowed.join(", "),
		});
	}
	const signed = await verified(request, env, path, nowMs);
	switch (endpoint.kind) {
		case "table":
			return listTable(env, url, signed.publisher, nowMs);
		case "lease":
			return renewLease(env, endpoint.keyId, signed, nowMs);
		case "fleet":
			return fleetView(request, env, signed, nowMs);
		case "route":
			return routeRequest(request, env, endpoint.segments, signed, nowMs);
	}
}

/** The checks every admin request passes first, in the contract's order: configuration (503), signature (401), key (401), body size (413). */
async function verified(request: Request, env: Env, path: string, nowMs: number): Promise<Signed> {
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
	return { publisher, modelOwners, body };
}

/**
 * `GET /admin/v1/routes[?after=<namespace/name/region>&limit=<n>]`: the
 * routes inside the caller's scope, a page at a time in key order (at most
 * LIST_PAGE_MAX, the default), `next` the `after` of the next page or null.
 * The query is not signed: it only moves a cursor inside what the signed
 * caller may read.
 */
async function listTable(env: Env, url: URL, publisher: Publisher, nowMs: number): Promise<Response> {
	const after = url.searchParams.get("after") ?? "";
	if (after !== "" && !(after.split("/").length === 3 && after.split("/").every(isK8sName))) {
		throw badRequest("after: must be a route key, {namespace}/{name}/{region}", "after");
	}
	const limitParam = url.searchParams.get("limit");
	const limit = limitParam === null ? LIST_PAGE_MAX : Number(limitParam);
	if (!Number.isInteger(limit) || limit < 1 || limit > LIST_PAGE_MAX) throw badRequest(`limit: must be an integer in [1, ${LIST_PAGE_MAX}]`, "limit");
	const scope = (s: Publisher["namespaces"]) => (s === "*" ? null : [...s]);
	const page = (await routeTable(env).list({ after, limit, namespaces: scope(publisher.namespaces), regions: scope(publisher.regions) })) as {
		routes: StoredRoute[];
		next: string | null;
	};
	return Response.json({ routes: page.routes.map((r) => storedView(r, nowMs)), next: page.next });
}

/** `PUT /admin/v1/leases/{keyId}` (docs/publication.md, "Leases"): only the key itself renews its lease. */
async function renewLease(env: Env, keyId: string, signed: Signed, nowMs: number): Promise<Response> {
	let lease: LeaseRequest;
	try {
		lease = validateLease(parseJson(signed.body));
	} catch (e) {
		if (e instanceof ValidationError) throw badRequest(e.message, e.field, "invalid_lease");
		throw e;
	}
	const { publisher } = signed;
	if (keyId !== publisher.id) throw forbidden("out_of_scope", `Key "${publisher.id}" may renew only its own lease, not "${keyId}"'s.`, "keyId");
	const result = await routeTable(env).renew({ keyId, group: publisher.group, sequence: lease.sequence, nowMs });
	if (!result.ok) throw refusal(result, "");
	const l = result.lease;
	return Response.json({ lease: { keyId: l.keyId, sequence: l.sequence, renewedAt: new Date(l.renewedAtMs).toISOString(), routes: l.routes, digest: l.digest } });
}

/** `GET /admin/v1/fleet` (docs/publication.md, "The fleet view"): the caller's group's models, with an ETag. */
async function fleetView(request: Request, env: Env, signed: Signed, nowMs: number): Promise<Response> {
	const result = await routeTable(env).fleet({
		group: signed.publisher.group,
		configuredOwners: Object.fromEntries(signed.modelOwners),
		ifNoneMatch: parseIfNoneMatch(request.headers.get("if-none-match")),
		nowMs,
	});
	const headers = { etag: `"${result.version}"`, "cache-control": "private, no-cache" };
	if (result.notModified) return new Response(null, { status: 304, headers });
	const { notModified: _, ...view } = result;
	return Response.json(view, { headers });
}

/** PUT, DELETE and GET of one route. */
async function routeRequest(request: Request, env: Env, rest: string[], signed: Signed, nowMs: number): Promise<Response> {
	const { publisher, modelOwners, body } = signed;
	const table = routeTable(env);
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
		invalidateModels(result.touched);
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
	const result = await table.put({ route: stored, configuredOwner, maxRoutesPerKey: maxRoutesPerPublisher(env), nowMs });
	if (!result.ok) throw refusal(result, `"${route.model}"`);
	invalidateModels(result.touched);
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

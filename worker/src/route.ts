/**
 * The route the operator publishes (docs/publication.md) and its validation.
 * Pure: no I/O, tested directly.
 */
export interface Routing {
	heavyPromptTokens: number;
	heavyMaxTokens: number;
	requestTimeoutMs: number;
	firstByteTimeoutMs: number;
	failoverAttempts: number;
}

export interface Route {
	namespace: string;
	name: string;
	region: string;
	model: string;
	endpoint: string;
	location: { latitude: number; longitude: number };
	replicas: number;
	readyReplicas: number;
	routing: Routing;
	edgeModel: string | null;
	generation: number;
	/** Increases with every write of this route (docs/publication.md, "Ordering"). */
	sequence: number;
	publishedAt: string;
	ttlSeconds: number;
	/** The credential the Worker sends the region; never returned by any answer, never logged. */
	upstreamToken: string;
}

/**
 * A route as the table holds it and the request path reads it: the route as
 * received plus what the Worker adds (docs/publication.md, "stored view").
 * It carries `upstreamToken`, which only proxy.ts may use; answers are built
 * with `storedView`, which leaves it out.
 */
export interface StoredRoute extends Route {
	/** When the Worker received it (ms since epoch, the Worker's clock): expiry counts from here. */
	receivedAtMs: number;
	/** The publisher key that wrote it. */
	keyId: string;
	/** The publisher group of that key. */
	group: string;
	/** `{group}/{namespace}`: the owner of the route's model. */
	owner: string;
	/** The first 16 hex digits of SHA-256 of `upstreamToken`. */
	upstreamTokenSha256: string;
	/**
	 * Not stored with the route: the table adds them when it reads it
	 * (table.ts), from the lease of `keyId` and the route's own row. Absent:
	 * no lease, not lapsed.
	 */
	leaseRenewedAtMs?: number | null;
	lapsedAtMs?: number | null;
}

/** What judges a route's liveness: its receive time and TTL, its writer's lease, and whether a renewal found it dead. */
export interface Expiry {
	receivedAtMs: number;
	ttlSeconds: number;
	/** The `renewedAt` of the lease of the key that last wrote the route (docs/publication.md, "Leases"). */
	leaseRenewedAtMs?: number | null;
	/** Set when a renewal found the route already expired: its expiry then, fixed, so no later renewal revives it. */
	lapsedAtMs?: number | null;
}

export interface RouteKey {
	namespace: string;
	name: string;
	region: string;
}

export const routeKey = (k: RouteKey): string => `${k.namespace}/${k.name}/${k.region}`;

const K8S_NAME = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const MODEL_NAME = /^[A-Za-z0-9._:/-]{1,128}$/;
// Workers AI model names look like "@cf/meta/llama-3.2-1b-instruct".
const EDGE_MODEL = /^[A-Za-z0-9@._:/-]{1,128}$/;
const UPSTREAM_TOKEN = /^[A-Za-z0-9._~+/=-]{16,512}$/;

/**
 * The numeric bounds of docs/publication.md ("The route"), which are the
 * ModelDeployment CRD's (`routing.*Seconds` × 1000).
 */
export const BOUNDS = {
	replicas: [0, 1000],
	heavyTokens: [0, 4_294_967_295],
	timeoutMs: [1000, 3_600_000],
	failoverAttempts: [1, 32],
	ttlSeconds: [10, 3600],
	sequence: [1, Number.MAX_SAFE_INTEGER],
} as const satisfies Record<string, readonly [number, number]>;
// RFC 3339 date-time with a mandatory offset (Z or ±hh:mm).
const RFC3339 = /^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/;

export const isK8sName = (s: string): boolean => s.length <= 63 && K8S_NAME.test(s);

export class ValidationError extends Error {
	constructor(
		readonly field: string,
		message: string,
	) {
		super(`${field}: ${message}`);
	}
}

const LOOPBACK = new Set(["localhost", "127.0.0.1", "[::1]", "::1"]);
function isLoopback(host: string): boolean {
	return LOOPBACK.has(host) || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host) || host.endsWith(".localhost");
}

/** Validates a parsed PUT body into a Route, or throws ValidationError naming the field. */
export function validateRoute(raw: unknown): Route {
	const obj = record(raw, "body");
	const str = (o: Record<string, unknown>, f: string, path = f): string => {
		const v = o[f];
		if (typeof v !== "string") throw new ValidationError(path, "must be a string");
		return v;
	};
	const int = (o: Record<string, unknown>, f: string, min: number, max: number, path = f): number => {
		const v = o[f];
		if (typeof v !== "number" || !Number.isInteger(v)) throw new ValidationError(path, "must be an integer");
		if (v < min || v > max) throw new ValidationError(path, `must be an integer in [${min}, ${max}]`);
		return v;
	};
	const num = (o: Record<string, unknown>, f: string, min: number, max: number, path: string): number => {
		const v = o[f];
		if (typeof v !== "number" || !Number.isFinite(v)) throw new ValidationError(path, "must be a number");
		if (v < min || v > max) throw new ValidationError(path, `must be in [${min}, ${max}]`);
		return v;
	};

	const names: Record<"namespace" | "name" | "region", string> = { namespace: "", name: "", region: "" };
	for (const f of ["namespace", "name", "region"] as const) {
		const v = str(obj, f);
		if (!isK8sName(v)) throw new ValidationError(f, "must be a Kubernetes name ([a-z0-9]([-a-z0-9]*[a-z0-9])?, at most 63 characters)");
		names[f] = v;
	}
	const model = str(obj, "model");
	if (!MODEL_NAME.test(model)) throw new ValidationError("model", "must be 1-128 characters of [A-Za-z0-9._:/-]");

	const endpoint = str(obj, "endpoint");
	let url: URL;
	try {
		url = new URL(endpoint);
	} catch {
		throw new ValidationError("endpoint", "must be a URL");
	}
	if (url.protocol !== "https:" && !(url.protocol === "http:" && isLoopback(url.hostname))) {
		throw new ValidationError("endpoint", "must be https (http only for loopback hosts)");
	}
	if (url.search || url.hash || url.username || url.password) {
		throw new ValidationError("endpoint", "must be a base URL without query, fragment or credentials");
	}

	const loc = record(obj.location, "location");
	const location = {
		latitude: num(loc, "latitude", -90, 90, "location.latitude"),
		longitude: num(loc, "longitude", -180, 180, "location.longitude"),
	};
	const replicas = int(obj, "replicas", ...BOUNDS.replicas);
	const readyReplicas = int(obj, "readyReplicas", ...BOUNDS.replicas);

	const r = record(obj.routing, "routing");
	const routing: Routing = {
		heavyPromptTokens: int(r, "heavyPromptTokens", ...BOUNDS.heavyTokens, "routing.heavyPromptTokens"),
		heavyMaxTokens: int(r, "heavyMaxTokens", ...BOUNDS.heavyTokens, "routing.heavyMaxTokens"),
		requestTimeoutMs: int(r, "requestTimeoutMs", ...BOUNDS.timeoutMs, "routing.requestTimeoutMs"),
		firstByteTimeoutMs: int(r, "firstByteTimeoutMs", ...BOUNDS.timeoutMs, "routing.firstByteTimeoutMs"),
		failoverAttempts: int(r, "failoverAttempts", ...BOUNDS.failoverAttempts, "routing.failoverAttempts"),
	};

	let edgeModel: string | null;
	// Absent is null, as for the operator's Option (its schema does not require it).
	if (obj.edgeModel === null || obj.edgeModel === undefined) edgeModel = null;
	else {
		edgeModel = str(obj, "edgeModel");
		if (!EDGE_MODEL.test(edgeModel)) throw new ValidationError("edgeModel", "must be null or 1-128 characters of [A-Za-z0-9@._:/-] (a Workers AI model name)");
	}
	const generation = int(obj, "generation", 0, Number.MAX_SAFE_INTEGER);
	const sequence = int(obj, "sequence", ...BOUNDS.sequence);
	const publishedAt = str(obj, "publishedAt");
	if (!RFC3339.test(publishedAt) || Number.isNaN(Date.parse(publishedAt))) {
		throw new ValidationError("publishedAt", "must be an RFC 3339 date-time");
	}
	const ttlSeconds = int(obj, "ttlSeconds", ...BOUNDS.ttlSeconds);
	const upstreamToken = str(obj, "upstreamToken");
	// The message never echoes the value: it is a credential.
	if (!UPSTREAM_TOKEN.test(upstreamToken)) throw new ValidationError("upstreamToken", "must be 16-512 characters of [A-Za-z0-9._~+/=-]");

	return {
		...names,
		model,
		endpoint: endpoint.replace(/\/+$/, ""),
		location,
		replicas,
		readyReplicas,
		routing,
		edgeModel,
		generation,
		sequence,
		publishedAt,
		ttlSeconds,
		upstreamToken,
	};
}

function record(v: unknown, field: string): Record<string, unknown> {
	if (typeof v !== "object" || v === null || Array.isArray(v)) throw new ValidationError(field, "must be an object");
	return v as Record<string, unknown>;
}

export const publishedAtMs = (r: Route): number => Date.parse(r.publishedAt);
/**
 * When the route dies, the one definition every liveness judgement uses
 * (ranking, the stored view, the admin list, the fleet view, the lease
 * digest; table.ts's EXPIRY_SQL is the same expression for its queries):
 * `max(receivedAt, renewedAt of its writer's lease) + ttlSeconds`, all on the
 * Worker's clock and never the sender's claim, unless a renewal found it
 * already dead (`lapsedAtMs`).
 */
export function expiresAtMs(r: Expiry): number {
	if (r.lapsedAtMs !== undefined && r.lapsedAtMs !== null) return r.lapsedAtMs;
	return Math.max(r.receivedAtMs, r.leaseRenewedAtMs ?? 0) + r.ttlSeconds * 1000;
}
export const isExpired = (r: Expiry, nowMs: number): boolean => nowMs >= expiresAtMs(r);

/** The stored view (docs/publication.md): the route as received without `upstreamToken`, plus what the Worker added. */
export interface StoredView extends Omit<Route, "upstreamToken"> {
	upstreamTokenSha256: string;
	keyId: string;
	owner: string;
	receivedAt: string;
	expiresAt: string;
	expired?: true;
}

/** The answer form of a stored route; `nowMs` given: `expired: true` when it has expired. */
export function storedView(r: StoredRoute, nowMs?: number): StoredView {
	// Built field by field, so nothing added to StoredRoute later (the token
	// above all) reaches an answer without being named here.
	const view: StoredView = {
		namespace: r.namespace,
		name: r.name,
		region: r.region,
		model: r.model,
		endpoint: r.endpoint,
		location: { latitude: r.location.latitude, longitude: r.location.longitude },
		replicas: r.replicas,
		readyReplicas: r.readyReplicas,
		routing: { ...r.routing },
		edgeModel: r.edgeModel,
		generation: r.generation,
		sequence: r.sequence,
		publishedAt: r.publishedAt,
		ttlSeconds: r.ttlSeconds,
		upstreamTokenSha256: r.upstreamTokenSha256,
		keyId: r.keyId,
		owner: r.owner,
		receivedAt: new Date(r.receivedAtMs).toISOString(),
		expiresAt: new Date(expiresAtMs(r)).toISOString(),
	};
	if (nowMs !== undefined && isExpired(r, nowMs)) view.expired = true;
	return view;
}

/** The first 16 hex digits of SHA-256 of the token (the stored view's `upstreamTokenSha256`). */
export async function tokenFingerprint(token: string): Promise<string> {
	const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(token)));
	let hex = "";
	for (const b of digest.subarray(0, 8)) hex += b.toString(16).padStart(2, "0");
	return hex;
}

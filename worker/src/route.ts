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

export interface RouteKey {
	namespace: string;
	name: string;
	region: string;
}

export const routeKey = (k: RouteKey): string => `${k.namespace}/${k.name}/${k.region}`;

const K8S_NAME = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const MODEL_NAME = /^[A-Za-z0-9._:/-]{1,128}$/;
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
	const int = (o: Record<string, unknown>, f: string, min: number, path = f, max = Number.MAX_SAFE_INTEGER): number => {
		const v = o[f];
		if (typeof v !== "number" || !Number.isInteger(v)) throw new ValidationError(path, "must be an integer");
		if (v < min || v > max) throw new ValidationError(path, max === Number.MAX_SAFE_INTEGER ? `must be ≥ ${min}` : `must be in [${min}, ${max}]`);
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
	const replicas = int(obj, "replicas", 0);
	const readyReplicas = int(obj, "readyReplicas", 0);

	const r = record(obj.routing, "routing");
	const routing: Routing = {
		heavyPromptTokens: int(r, "heavyPromptTokens", 0, "routing.heavyPromptTokens"),
		heavyMaxTokens: int(r, "heavyMaxTokens", 0, "routing.heavyMaxTokens"),
		requestTimeoutMs: int(r, "requestTimeoutMs", 1, "routing.requestTimeoutMs"),
		firstByteTimeoutMs: int(r, "firstByteTimeoutMs", 1, "routing.firstByteTimeoutMs"),
		failoverAttempts: int(r, "failoverAttempts", 1, "routing.failoverAttempts"),
	};

	let edgeModel: string | null;
	if (obj.edgeModel === null) edgeModel = null;
	else {
		edgeModel = str(obj, "edgeModel");
		// Workers AI model names look like "@cf/meta/llama-3.2-1b-instruct".
		if (!/^[A-Za-z0-9@._:/-]{1,128}$/.test(edgeModel)) throw new ValidationError("edgeModel", "must be null or a Workers AI model name");
	}
	const generation = int(obj, "generation", 0);
	const publishedAt = str(obj, "publishedAt");
	if (!RFC3339.test(publishedAt) || Number.isNaN(Date.parse(publishedAt))) {
		throw new ValidationError("publishedAt", "must be an RFC 3339 date-time");
	}
	const ttlSeconds = int(obj, "ttlSeconds", 10, "ttlSeconds", 3600);
	const sequence = int(obj, "sequence", 1, "sequence");
	const upstreamToken = str(obj, "upstreamToken");
	if (!/^[A-Za-z0-9._~+/=-]{16,512}$/.test(upstreamToken)) {
		throw new ValidationError("upstreamToken", "must be 16-512 characters of [A-Za-z0-9._~+/=-]");
	}

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
export const expiresAtMs = (r: Route): number => publishedAtMs(r) + r.ttlSeconds * 1000;
export const isExpired = (r: Route, nowMs: number): boolean => nowMs >= expiresAtMs(r);

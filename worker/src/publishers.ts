/**
 * Who may publish what (docs/publication.md, "The Worker's configuration"):
 * `BACKHAUL_PUBLISHERS`, a JSON array of publisher keys with their scopes, and
 * `BACKHAUL_MODEL_OWNERS`, a JSON object naming the owner of some models.
 * Each is parsed and checked once per isolate per value. Anything malformed
 * is a configuration error (503 on every admin request, naming the entry):
 * a typo never silently drops a key's scope.
 */
import { ApiError } from "./errors";
import { isK8sName } from "./route";
import { decodeBase64, importPublicKey, KEY_ID_PATTERN } from "./signature";

/** `["*"]` (any) or a set of names. */
export type Scope = "*" | ReadonlySet<string>;

export interface Publisher {
	id: string;
	publicKey: CryptoKey;
	group: string;
	namespaces: Scope;
	regions: Scope;
	/** Host patterns the key's endpoints may use; null: any host. */
	endpointHosts: readonly string[] | null;
}

/** A group is part of an owner `{group}/{namespace}`, so it has no `/`. */
const GROUP_PATTERN = KEY_ID_PATTERN;
// A host name (or IPv4 address), or "[...]" for IPv6, optionally behind "*." for any subdomain.
const HOST_PATTERN = /^(\*\.)?([a-z0-9]([-a-z0-9]*[a-z0-9])?)(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$|^\[[0-9a-f:.]+\]$/;
const PUBLISHER_FIELDS = new Set(["id", "publicKey", "group", "namespaces", "regions", "endpointHosts"]);

export class ConfigError extends Error {}

const unavailable = (code: string, message: string) => new ApiError(503, "service_unavailable", code, message);

/** Checks one entry; throws ConfigError naming what is wrong (the caller adds which entry). */
function parseEntry(raw: unknown): Omit<Publisher, "publicKey"> & { publicKey: Uint8Array } {
	if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw new ConfigError("must be an object");
	const o = raw as Record<string, unknown>;
	for (const k of Object.keys(o)) if (!PUBLISHER_FIELDS.has(k)) throw new ConfigError(`unknown field "${k}"`);
	const { id, publicKey, group = id } = o;
	if (typeof id !== "string" || !KEY_ID_PATTERN.test(id)) throw new ConfigError("id: must be 1-64 characters of [A-Za-z0-9_-]");
	if (typeof group !== "string" || !GROUP_PATTERN.test(group)) throw new ConfigError("group: must be 1-64 characters of [A-Za-z0-9_-]");
	const key = typeof publicKey === "string" ? decodeBase64(publicKey) : null;
	if (!key || key.length !== 32) throw new ConfigError("publicKey: must be the standard base64 of a raw 32-byte Ed25519 public key");
	const scope = (field: "namespaces" | "regions"): Scope => {
		const v = o[field];
		if (!Array.isArray(v) || v.length === 0) throw new ConfigError(`${field}: must be a non-empty array (["*"]: any)`);
		for (const s of v) {
			if (typeof s !== "string" || (s !== "*" && !isK8sName(s))) throw new ConfigError(`${field}: ${JSON.stringify(s)} is neither "*" nor a Kubernetes name`);
		}
		return v.includes("*") ? "*" : new Set(v as string[]);
	};
	const namespaces = scope("namespaces");
	const regions = scope("regions");
	let endpointHosts: string[] | null = null;
	if (o.endpointHosts !== undefined) {
		const v = o.endpointHosts;
		if (!Array.isArray(v)) throw new ConfigError("endpointHosts: must be an array of host names");
		endpointHosts = v.map((h) => {
			if (typeof h !== "string" || !HOST_PATTERN.test(h.toLowerCase())) {
				throw new ConfigError(`endpointHosts: ${JSON.stringify(h)} is not a host name or *.<host name>`);
			}
			return h.toLowerCase();
		});
	}
	return { id, publicKey: key, group, namespaces, regions, endpointHosts };
}

/** Parses BACKHAUL_PUBLISHERS (a JSON string, or the array itself when the var is a JSON value) without importing keys. */
export function parsePublishers(value: unknown): (Omit<Publisher, "publicKey"> & { publicKey: Uint8Array })[] {
	let list: unknown = value;
	if (typeof value === "string") {
		if (value.trim() === "") return [];
		try {
			list = JSON.parse(value);
		} catch {
			throw new ConfigError("BACKHAUL_PUBLISHERS is not JSON");
		}
	}
	if (value === undefined || value === null) return [];
	if (!Array.isArray(list)) throw new ConfigError("BACKHAUL_PUBLISHERS must be a JSON array");
	const seen = new Set<string>();
	return list.map((raw, i) => {
		const label = `BACKHAUL_PUBLISHERS[${i}]${typeof (raw as { id?: unknown })?.id === "string" ? ` ("${(raw as { id: string }).id}")` : ""}`;
		try {
			const p = parseEntry(raw);
			if (seen.has(p.id)) throw new ConfigError(`id: "${p.id}" appears twice`);
			seen.add(p.id);
			return p;
		} catch (e) {
			if (e instanceof ConfigError) throw new ConfigError(`${label}: ${e.message}`);
			throw e;
		}
	});
}

/** Parsed configurations by value (a var changes only with a deploy; tests pass others). */
const publisherCache = new Map<unknown, Map<string, Publisher>>();

/**
 * The publishers by key id, or a 503 ApiError: unset or empty (no admin API)
 * or malformed (naming the entry).
 */
export async function loadPublishers(env: Env): Promise<Map<string, Publisher>> {
	const value: unknown = (env as { BACKHAUL_PUBLISHERS?: unknown }).BACKHAUL_PUBLISHERS;
	const cached = publisherCache.get(value);
	if (cached) return cached;
	let parsed: ReturnType<typeof parsePublishers>;
	try {
		parsed = parsePublishers(value);
	} catch (e) {
		if (e instanceof ConfigError) throw unavailable("publishers_invalid", `The Worker's publisher configuration is invalid: ${e.message}.`);
		throw e;
	}
	if (parsed.length === 0) throw unavailable("publishers_unset", "BACKHAUL_PUBLISHERS is not configured on this Worker: the admin API is off.");
	const publishers = new Map<string, Publisher>();
	for (const [i, p] of parsed.entries()) {
		let publicKey: CryptoKey;
		try {
			publicKey = await importPublicKey(p.publicKey);
		} catch (e) {
			throw unavailable("publishers_invalid", `The Worker's publisher configuration is invalid: BACKHAUL_PUBLISHERS[${i}] ("${p.id}"): publicKey: ${String(e)}.`);
		}
		publishers.set(p.id, { ...p, publicKey });
	}
	if (publisherCache.size >= 8) publisherCache.clear();
	publisherCache.set(value, publishers);
	return publishers;
}

export const inScope = (scope: Scope, name: string): boolean => scope === "*" || scope.has(name);

/** Whether `host` (a URL's hostname) is one of `patterns`: exact, or `*.suffix` for one or more labels under suffix. */
export function hostAllowed(patterns: readonly string[] | null, host: string): boolean {
	if (patterns === null) return true;
	const h = host.toLowerCase();
	return patterns.some((p) => (p.startsWith("*.") ? h.endsWith(p.slice(1)) && h.length > p.length - 1 : h === p));
}

const OWNER_PATTERN = /^([A-Za-z0-9_-]{1,64})\/([a-z0-9]([-a-z0-9]*[a-z0-9])?)$/;
const MODEL_PATTERN = /^[A-Za-z0-9._:/-]{1,128}$/;
const ownerCache = new Map<unknown, ReadonlyMap<string, string>>();

/**
 * BACKHAUL_MODEL_OWNERS: served model name → `"{group}/{namespace}"`. Unset or
 * empty: no configured owners. Malformed: a 503 ApiError naming the entry.
 */
export function loadModelOwners(env: Env): ReadonlyMap<string, string> {
	const value: unknown = (env as { BACKHAUL_MODEL_OWNERS?: unknown }).BACKHAUL_MODEL_OWNERS;
	const cached = ownerCache.get(value);
	if (cached) return cached;
	const fail = (why: string) => unavailable("model_owners_invalid", `The Worker's BACKHAUL_MODEL_OWNERS is invalid: ${why}.`);
	let obj: unknown = value;
	if (typeof value === "string") {
		if (value.trim() === "") obj = {};
		else {
			try {
				obj = JSON.parse(value);
			} catch {
				throw fail("not JSON");
			}
		}
	}
	if (value === undefined || value === null) obj = {};
	if (typeof obj !== "object" || obj === null || Array.isArray(obj)) throw fail('must be a JSON object {"<model>": "<group>/<namespace>"}');
	const owners = new Map<string, string>();
	for (const [model, owner] of Object.entries(obj)) {
		if (!MODEL_PATTERN.test(model)) throw fail(`${JSON.stringify(model)} is not a served model name`);
		if (typeof owner !== "string" || !OWNER_PATTERN.test(owner) || owner.split("/")[1]!.length > 63) {
			throw fail(`${JSON.stringify(model)}: the owner must be "<group>/<namespace>"`);
		}
		owners.set(model, owner);
	}
	if (ownerCache.size >= 8) ownerCache.clear();
	ownerCache.set(value, owners);
	return owners;
}

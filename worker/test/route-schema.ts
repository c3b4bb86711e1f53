/**
 * The Worker's validateRoute against a JSON Schema (2020-12, as schemars
 * writes it) of the route: every bound in the schema, every required field,
 * and the set of fields, both ways. Ajv cannot run in workerd (it generates
 * code), so the schema is walked here: `properties`, `required`, `$ref` into
 * `$defs`/`definitions`, `allOf` of one, `anyOf`/`oneOf` with a null branch,
 * `type` (a list with "null" for nullable), `minimum`/`maximum`,
 * `exclusiveMinimum`/`exclusiveMaximum`, `minLength`/`maxLength`, `pattern`.
 */
import { describe, expect, it } from "vitest";
import { validateRoute, ValidationError } from "../src/route";

/** The example route of docs/publication.md, its token written out: valid, and schema-valid. */
export const ROUTE_EXAMPLE = {
	namespace: "default",
	name: "smollm2",
	region: "us-east",
	model: "smollm2-135m",
	endpoint: "https://us-east.gpu.example.com",
	location: { latitude: 39.04, longitude: -77.49 },
	replicas: 2,
	readyReplicas: 2,
	routing: { heavyPromptTokens: 1024, heavyMaxTokens: 512, requestTimeoutMs: 120000, firstByteTimeoutMs: 15000, failoverAttempts: 3 },
	edgeModel: "@cf/meta/llama-3.2-1b-instruct",
	generation: 4,
	sequence: 1796112000123,
	publishedAt: "2026-12-01T07:00:00Z",
	ttlSeconds: 60,
	upstreamToken: "q3Jx8mZ0c2VjcmV0LXRva2VuLWZvci10ZXN0cy0wMQZg",
};

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
export type Schema = { [k: string]: Json };

/** A property's schema with references and nullable wrappers resolved. */
export interface Field {
	path: string;
	required: boolean;
	nullable: boolean;
	types: string[];
	schema: Schema;
	children: Field[];
}

const isObj = (v: unknown): v is Schema => typeof v === "object" && v !== null && !Array.isArray(v);

function resolve(root: Schema, s: Schema, seen = new Set<string>()): Schema {
	let out: Schema = { ...s };
	const ref = out.$ref;
	if (typeof ref === "string") {
		const m = /^#\/(\$defs|definitions)\/(.+)$/.exec(ref);
		if (!m) throw new Error(`unsupported $ref ${ref}`);
		if (seen.has(ref)) throw new Error(`recursive $ref ${ref}`);
		const target = (root[m[1]!] as Schema | undefined)?.[decodeURIComponent(m[2]!)];
		if (!isObj(target)) throw new Error(`unresolved $ref ${ref}`);
		const { $ref: _, ...siblings } = out;
		out = { ...resolve(root, target, new Set([...seen, ref])), ...siblings };
	}
	const all = out.allOf;
	if (Array.isArray(all) && all.length === 1 && isObj(all[0])) {
		const { allOf: _, ...siblings } = out;
		out = { ...resolve(root, all[0], seen), ...siblings };
	}
	return out;
}

function field(root: Schema, path: string, raw: Schema, required: boolean): Field {
	let s = resolve(root, raw);
	let nullable = false;
	for (const k of ["anyOf", "oneOf"] as const) {
		const branches = s[k];
		if (!Array.isArray(branches)) continue;
		const nonNull = branches.filter((b) => !(isObj(b) && b.type === "null"));
		if (nonNull.length === branches.length - 1 && nonNull.length === 1 && isObj(nonNull[0])) {
			const { [k]: _, ...siblings } = s;
			nullable = true;
			s = { ...resolve(root, nonNull[0]), ...siblings };
		} else throw new Error(`${path}: ${k} other than T | null is not supported`);
	}
	const t = s.type;
	let types = Array.isArray(t) ? (t as string[]) : typeof t === "string" ? [t] : [];
	if (types.includes("null")) {
		nullable = true;
		types = types.filter((x) => x !== "null");
	}
	if (types.length !== 1) throw new Error(`${path}: expected one non-null type, got ${JSON.stringify(t)}`);
	const children = types[0] === "object" ? fieldsOf(root, s, path) : [];
	return { path, required, nullable, types, schema: s, children };
}

function fieldsOf(root: Schema, s: Schema, prefix: string): Field[] {
	const props = s.properties;
	if (!isObj(props)) throw new Error(`${prefix || "(root)"}: an object schema without properties`);
	const required = new Set(Array.isArray(s.required) ? (s.required as string[]) : []);
	for (const r of required) if (!(r in props)) throw new Error(`${prefix || "(root)"}: required "${r}" is not a property`);
	return Object.entries(props).map(([k, v]) => {
		if (!isObj(v)) throw new Error(`${prefix}${k}: not a schema`);
		return field(root, prefix ? `${prefix}.${k}` : k, v, required.has(k));
	});
}

/** Every property of the schema, depth first. */
export function schemaFields(schema: Schema): Field[] {
	const out: Field[] = [];
	const visit = (fs: Field[]) => {
		for (const f of fs) {
			out.push(f);
			visit(f.children);
		}
	};
	visit(fieldsOf(schema, resolve(schema, schema), ""));
	return out;
}

const get = (o: unknown, path: string): unknown => path.split(".").reduce<unknown>((v, k) => (isObj(v) ? v[k] : undefined), o);

function withValue(base: object, path: string, value: unknown, remove = false): unknown {
	const copy = structuredClone(base) as Record<string, unknown>;
	const keys = path.split(".");
	let at: Record<string, unknown> = copy;
	for (const k of keys.slice(0, -1)) at = at[k] as Record<string, unknown>;
	if (remove) delete at[keys.at(-1)!];
	else at[keys.at(-1)!] = value;
	return copy;
}

/** "valid", or the field validateRoute names. */
function verdict(route: unknown): string {
	try {
		validateRoute(route);
		return "valid";
	} catch (e) {
		if (e instanceof ValidationError) return e.field;
		throw e;
	}
}

/** The schema's own verdict on a string (pattern and lengths; JSON Schema counts code points). */
function schemaAcceptsString(s: Schema, v: string): boolean {
	const n = [...v].length;
	if (typeof s.minLength === "number" && n < s.minLength) return false;
	if (typeof s.maxLength === "number" && n > s.maxLength) return false;
	return typeof s.pattern !== "string" || new RegExp(s.pattern, "u").test(v);
}

/** Length bounds of a string field: minLength/maxLength, else a pattern of the form ^[class]{m,n}$. */
function lengthBounds(s: Schema): { lo: number; hi: number | null } | null {
	let lo: number | null = typeof s.minLength === "number" ? s.minLength : null;
	let hi: number | null = typeof s.maxLength === "number" ? s.maxLength : null;
	const m = typeof s.pattern === "string" ? /^\^\[[^\]]+\]\{(\d+),(\d+)\}\$$/.exec(s.pattern) : null;
	if (m) {
		lo = Math.max(lo ?? 0, Number(m[1]));
		hi = Math.min(hi ?? Infinity, Number(m[2]));
	}
	if (lo === null && hi === null) return null;
	return { lo: lo ?? 0, hi };
}

/** Strings to ask both the schema and the Worker about. */
function stringCorpus(s: Schema): string[] {
	const out = new Set<string>(["", "a", "A", "0", "-", "a-", "-a", "a-b", "a.b", "a_b", "a b", " a", "a ", "é", "a\n", "\u0000", "@cf/meta/llama-3.2-1b-instruct", "smollm2-135m", "org/model:tag"]);
	for (let c = 0x20; c < 0x7f; c++) {
		const ch = String.fromCharCode(c);
		for (const t of [ch, `a${ch}b`, `${"a".repeat(16)}${ch}`]) out.add(t);
	}
	const b = lengthBounds(s);
	if (b) {
		for (const n of [b.lo - 1, b.lo, b.lo + 1, ...(b.hi === null ? [] : [b.hi - 1, b.hi, b.hi + 1])]) {
			if (n < 0) continue;
			for (const ch of ["a", "Z", "9", "-", "."]) out.add(ch.repeat(n));
		}
	}
	return [...out];
}

/** A string the schema accepts of exactly `n` code points, from a few characters tried in turn. */
function sampleOfLength(s: Schema, n: number): string | null {
	for (const ch of ["a", "0", "A", "x", "_"]) {
		const v = ch.repeat(n);
		if (schemaAcceptsString(s, v)) return v;
	}
	return null;
}

/**
 * Defines the agreement tests of `schema` (or of its absence: `problem`)
 * with validateRoute, starting from `example`, a valid route.
 */
export function describeSchemaAgreement(label: string, schema: Schema | null, example: Record<string, unknown>, problem?: string): void {
	describe(`validateRoute agrees with ${label}`, () => {
		if (!schema) {
			it("has the schema to check against", () => {
				expect.fail(problem ?? `${label} is missing`);
			});
			return;
		}
		const fields = schemaFields(schema);
		const leaves = fields.filter((f) => f.children.length === 0);

		it("starts from an example the Worker accepts", () => {
			expect(verdict(example)).toBe("valid");
		});

		it("has the same fields as the Worker's route, nested ones included", () => {
			const out = validateRoute(example) as unknown as Record<string, unknown>;
			const paths: string[] = [];
			const visit = (o: Record<string, unknown>, prefix: string) => {
				for (const [k, v] of Object.entries(o)) {
					const p = prefix ? `${prefix}.${k}` : k;
					paths.push(p);
					if (isObj(v)) visit(v as Record<string, unknown>, p);
				}
			};
			visit(out, "");
			expect(fields.map((f) => f.path).sort(), "schema properties vs the fields validateRoute returns").toEqual(paths.sort());
		});

		it("requires exactly the fields the schema requires", () => {
			for (const f of fields) {
				const v = verdict(withValue(example, f.path, undefined, true));
				if (f.required) expect(v, `${f.path} is required by the schema: the Worker must refuse its absence, naming it`).toBe(f.path);
				else expect(v, `${f.path} is optional in the schema: the Worker must accept its absence`).toBe("valid");
			}
		});

		it("accepts null exactly where the schema does", () => {
			for (const f of fields) {
				const v = verdict(withValue(example, f.path, null));
				if (f.nullable) expect(v, `${f.path} is nullable in the schema`).toBe("valid");
				else expect(v, `${f.path} is not nullable in the schema`).toBe(f.path);
			}
		});

		it("refuses a value of the wrong type, naming the field", () => {
			for (const f of fields) {
				const wrong = f.types[0] === "string" ? 12 : f.types[0] === "object" ? "x" : "12";
				expect(verdict(withValue(example, f.path, wrong)), f.path).toBe(f.path);
			}
		});

		const numeric = leaves.filter((f) => f.types[0] === "integer" || f.types[0] === "number");
		it("accepts every numeric bound and refuses one past it, naming the field", () => {
			let checked = 0;
			for (const f of numeric) {
				const s = f.schema;
				const step = (x: number) => (f.types[0] === "integer" ? 1 : Math.max(Math.abs(x) * 1e-9, 1e-9));
				const at = (x: number) => verdict(withValue(example, f.path, x));
				if (typeof s.minimum === "number") {
					expect(at(s.minimum), `${f.path} = minimum ${s.minimum}`).toBe("valid");
					expect(at(s.minimum - step(s.minimum)), `${f.path} below minimum ${s.minimum}`).toBe(f.path);
					checked++;
				}
				if (typeof s.maximum === "number") {
					expect(at(s.maximum), `${f.path} = maximum ${s.maximum}`).toBe("valid");
					expect(at(s.maximum + step(s.maximum)), `${f.path} above maximum ${s.maximum}`).toBe(f.path);
					checked++;
				}
				if (typeof s.exclusiveMinimum === "number") {
					expect(at(s.exclusiveMinimum), `${f.path} = exclusiveMinimum`).toBe(f.path);
					expect(at(s.exclusiveMinimum + step(s.exclusiveMinimum)), `${f.path} just above exclusiveMinimum`).toBe("valid");
					checked++;
				}
				if (typeof s.exclusiveMaximum === "number") {
					expect(at(s.exclusiveMaximum), `${f.path} = exclusiveMaximum`).toBe(f.path);
					expect(at(s.exclusiveMaximum - step(s.exclusiveMaximum)), `${f.path} just below exclusiveMaximum`).toBe("valid");
					checked++;
				}
				if (f.types[0] === "integer") {
					const inside = typeof s.minimum === "number" ? s.minimum : get(example, f.path);
					expect(at((inside as number) + 0.5), `${f.path} is an integer`).toBe(f.path);
				}
			}
			expect(checked, "numeric bounds found in the schema").toBeGreaterThan(0);
		});

		const strings = leaves.filter((f) => f.types[0] === "string" && (f.schema.pattern !== undefined || lengthBounds(f.schema) !== null));
		it("accepts every string length bound and refuses one past it, naming the field", () => {
			let checked = 0;
			for (const f of strings) {
				const b = lengthBounds(f.schema);
				if (!b) continue;
				const at = (v: string) => verdict(withValue(example, f.path, v));
				for (const n of [b.lo, ...(b.hi === null ? [] : [b.hi])]) {
					const v = sampleOfLength(f.schema, n);
					if (v === null) continue; // e.g. a pattern that needs two characters at length 1
					expect(at(v), `${f.path} of length ${n}`).toBe("valid");
					checked++;
				}
				// One past each bound, in the character the in-bounds sample used.
				if (b.hi !== null) {
					const top = sampleOfLength(f.schema, b.hi) ?? "a";
					expect(at(top + top.slice(-1)), `${f.path} of length ${b.hi + 1}`).toBe(f.path);
				}
				if (b.lo > 0) {
					const bottom = sampleOfLength(f.schema, b.lo) ?? "a".repeat(b.lo);
					expect(at([...bottom].slice(1).join("")), `${f.path} of length ${b.lo - 1}`).toBe(f.path);
				}
			}
			expect(checked, "string length bounds found in the schema").toBeGreaterThan(0);
		});

		it("agrees with every pattern and length bound on a corpus of strings", () => {
			for (const f of strings) {
				for (const v of stringCorpus(f.schema)) {
					const expected = schemaAcceptsString(f.schema, v) ? "valid" : f.path;
					expect(verdict(withValue(example, f.path, v)), `${f.path} = ${JSON.stringify(v)}`).toBe(expected);
				}
			}
		});
	});
}

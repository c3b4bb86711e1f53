/**
 * validateRoute against docs/schemas/route.schema.json, the JSON Schema the
 * operator generates from its Route type (docs/publication.md): every bound,
 * every required field, and the field set, so either side drifting fails here.
 */
/// <reference types="vite/client" />
import { describeSchemaAgreement, ROUTE_EXAMPLE, type Schema } from "../route-schema";

// A glob, so a missing file is one failing test saying so rather than a failed import.
const found = import.meta.glob<Schema>("../../../docs/schemas/route.schema.json", { eager: true, import: "default" });
const schema = Object.values(found)[0] ?? null;

describeSchemaAgreement(
	"docs/schemas/route.schema.json",
	schema,
	ROUTE_EXAMPLE,
	"docs/schemas/route.schema.json is missing: it is generated from the operator's Route type (backhaul-operator route-schema, make generate)",
);

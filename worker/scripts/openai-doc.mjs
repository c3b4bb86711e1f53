// Reads docs/openai-compatibility.md for the drift checks: the field names in
// the first column of the tables between `<!-- fields: chat -->` (or
// `completions`) and `<!-- /fields -->`. scripts/check-openai-fields.py reads
// the same markers.

/** `{chat, completions}`: the set of fields each table has a row for. */
export function docFields(doc) {
	const out = { chat: new Set(), completions: new Set() };
	const re = /<!-- fields: (chat|completions) -->([\s\S]*?)<!-- \/fields -->/g;
	for (const [, api, body] of doc.matchAll(re)) {
		for (const line of body.split("\n")) {
			const m = /^\|\s*`([a-z_]+)`\s*\|/.exec(line);
			if (m) out[api].add(m[1]);
		}
	}
	if (out.chat.size === 0 || out.completions.size === 0) throw new Error("the doc's field tables (<!-- fields: chat|completions -->) are missing or empty");
	return out;
}

/** Whether the doc's audit line names `openai (<lang>) <version>`. */
export const docMentionsVersion = (doc, lang, version) => doc.includes(`openai (${lang}) ${version}`);

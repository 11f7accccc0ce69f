#!/usr/bin/env python3
"""Writes profiles/r4-extensions.json: R4's own extension definitions (the
`extension-definitions.json` of the R4 specification) as StructureDefinitions
with their differentials only, the documentation left out; the validator makes
their snapshots over R4's Extension as it does for the project's own.

One resource per line, so that a change of the source reads as a change of
lines.

Usage: python3 scripts/gen_r4_extensions.py ../shared/fhir-r4/extension-definitions.json > profiles/r4-extensions.json
"""
import json
import sys

KEPT = [
    "resourceType", "id", "url", "name", "status", "fhirVersion", "kind",
    "abstract", "context", "contextInvariant", "type", "baseDefinition",
    "derivation", "differential",
]
# What an element says for people, not for the validator.
DOCUMENTATION = ["short", "definition", "comment", "requirements", "alias", "mapping", "isSummary"]


def main(path):
    bundle = json.load(open(path, encoding="utf-8"))
    lines = []
    for entry in bundle["entry"]:
        sd = entry["resource"]
        if sd.get("resourceType") != "StructureDefinition" or sd.get("type") != "Extension":
            continue
        kept = {k: sd[k] for k in KEPT if k in sd}
        for element in kept.get("differential", {}).get("element", []):
            for key in DOCUMENTATION:
                element.pop(key, None)
        lines.append(json.dumps({"resource": kept}, ensure_ascii=False, separators=(",", ":")))
    lines.sort()
    sys.stdout.write('{"resourceType":"Bundle","type":"collection","entry":[\n')
    sys.stdout.write(",\n".join(lines))
    sys.stdout.write("\n]}\n")


if __name__ == "__main__":
    main(sys.argv[1])

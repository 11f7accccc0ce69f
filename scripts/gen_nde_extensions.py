#!/usr/bin/env python3
"""Writes profiles/nde-extensions.json: the extensions of the ANS guide
*Notification d'Evenements* 3.0.0 as StructureDefinitions (differentials over
Extension), from the guide's FSH source (the `Extension:` files).

Usage: python3 scripts/gen_nde_extensions.py ../shared/ig/nde-3.0.0-fsh > profiles/nde-extensions.json
"""
import glob
import json
import os
import re
import sys

BASE = "https://interop.esante.gouv.fr/ig/fhir/nde/StructureDefinition/"
FR_CORE = "https://hl7.fr/ig/fhir/core/StructureDefinition/"
PROFILES = {
    "FRCorePatientProfile": FR_CORE + "fr-core-patient",
    "FRCorePatientINSProfile": FR_CORE + "fr-core-patient-ins",
    "FRCorePractitionerProfile": FR_CORE + "fr-core-practitioner",
    "FRCoreOrganizationProfile": FR_CORE + "fr-core-organization",
    "FRCoreRelatedPersonProfile": FR_CORE + "fr-core-related-person",
}


def aliases(root):
    out = {}
    for line in open(os.path.join(root, "aliases.fsh"), encoding="utf-8"):
        m = re.match(r"Alias:\s*(\S+)\s*=\s*(\S+)", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def extension(path, alias):
    text = open(path, encoding="utf-8").read()
    name = re.search(r"^Extension:\s*(\S+)", text, re.M).group(1)
    ext_id = re.search(r"^Id:\s*(\S+)", text, re.M).group(1)
    title = re.search(r'^Title:\s*"([^"]*)"', text, re.M)
    contexts = re.search(r"^Context:\s*(.+)$", text, re.M)
    value = {"id": "Extension.value[x]", "path": "Extension.value[x]"}
    m = re.search(r"^\* value\[x\] only (\w+)", text, re.M)
    if m:
        value["type"] = [{"code": m.group(1)}]
    if re.search(r"^\* value\[x\] 1\.\.", text, re.M):
        value["min"] = 1
    m = re.search(r"^\* value\w* only Reference\(([^)]*)\)", text, re.M)
    if m:
        targets = [PROFILES[p.strip()] for p in m.group(1).split(" or ")]
        value["type"] = [{"code": "Reference", "targetProfile": targets}]
    m = re.search(r"^\* value\w* from (\S+) \((\w+)\)", text, re.M)
    if m:
        value["binding"] = {"strength": m.group(2), "valueSet": alias.get(m.group(1), m.group(1))}
    sd = {
        "resourceType": "StructureDefinition",
        "id": ext_id,
        "url": BASE + ext_id,
        "name": name,
        "title": title.group(1) if title else name,
        "status": "active",
        "fhirVersion": "4.0.1",
        "kind": "complex-type",
        "abstract": False,
        "type": "Extension",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Extension",
        "derivation": "constraint",
        "differential": {"element": [
            {"id": "Extension", "path": "Extension"},
            {"id": "Extension.extension", "path": "Extension.extension", "max": "0"},
            {"id": "Extension.url", "path": "Extension.url", "fixedUri": BASE + ext_id},
            value,
        ]},
    }
    if contexts:
        sd["context"] = [{"type": "element", "expression": c.strip()}
                         for c in contexts.group(1).split(",")]
    return sd


def main(root):
    alias = aliases(root)
    entries = [{"resource": extension(p, alias)}
               for p in sorted(glob.glob(os.path.join(root, "Extensions", "*.fsh")))]
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": entries}
    json.dump(bundle, sys.stdout, ensure_ascii=False, indent=1)
    print()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/ig/nde-3.0.0-fsh")

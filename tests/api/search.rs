//! Search over every parameter type, written through the API and searched over HTTP.

use serde_json::{json, Value};

use crate::support::{json_of, next_link, outcome_of, refs_by_mode, TestServer};

/// The ids of a search's matches, sorted.
async fn ids(s: &TestServer, query: &str) -> Vec<String> {
    let bundle = json_of(s.get(query).await, 200).await;
    let mut ids: Vec<String> = bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == "match")
        .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    assert_eq!(bundle["total"], ids.len(), "{query}: total");
    ids
}

async fn put(s: &TestServer, resource: Value) {
    let path = format!(
        "{}/{}",
        resource["resourceType"].as_str().expect("type"),
        resource["id"].as_str().expect("id")
    );
    let status = s.put_json(&path, &resource).await.status();
    assert!(status == 200 || status == 201, "PUT {path}: {status}");
}

async fn patients(s: &TestServer) {
    put(s, json!({"resourceType":"Patient","id":"jeanne","active":true,
        "identifier":[{"system":"urn:oid:1.2.250.1.213.1.4.10","value":"2740512345678"}],
        "name":[{"family":"Lefèvre","given":["Jeanne","Marie"]}],"gender":"female","birthDate":"1974-05-12",
        "address":[{"city":"Tulle","postalCode":"19000"}],
        "telecom":[{"system":"email","value":"jeanne@exemple.fr"}],
        "generalPractitioner":[{"reference":"Practitioner/dr-martin"}],
        "meta":{"tag":[{"system":"http://passerelle.fr/tag","code":"demo"}]}})).await;
    put(
        s,
        json!({"resourceType":"Patient","id":"louis","active":false,
        "name":[{"family":"Lefebvre","given":["Louis"]}],"gender":"male","birthDate":"1950",
        "generalPractitioner":[{"reference":"Practitioner/dr-durand"}]}),
    )
    .await;
    put(s, json!({"resourceType":"Patient","id":"anon"})).await;
}

#[tokio::test]
async fn strings_tokens_and_references() {
    let s = TestServer::start().await;
    patients(&s).await;
    // String: case- and accent-insensitive prefix by default; :exact; :contains.
    assert_eq!(ids(&s, "Patient?family=lefevre").await, ["jeanne"]);
    assert_eq!(ids(&s, "Patient?family=LEF").await, ["jeanne", "louis"]);
    assert_eq!(ids(&s, "Patient?family:exact=Lefèvre").await, ["jeanne"]);
    assert!(ids(&s, "Patient?family:exact=lefèvre").await.is_empty());
    assert_eq!(ids(&s, "Patient?name:contains=ebv").await, ["louis"]);
    assert_eq!(ids(&s, "Patient?given=marie").await, ["jeanne"]);
    assert_eq!(ids(&s, "Patient?address-city=tulle").await, ["jeanne"]);
    // OR with commas, AND with repeated parameters.
    assert_eq!(
        ids(&s, "Patient?given=louis,marie").await,
        ["jeanne", "louis"]
    );
    assert_eq!(ids(&s, "Patient?family=lef&given=louis").await, ["louis"]);
    // Token: code, system|code, |code, :not, :text, booleans, ContactPoint.
    assert_eq!(ids(&s, "Patient?gender=female").await, ["jeanne"]);
    assert_eq!(
        ids(&s, "Patient?gender:not=female").await,
        ["anon", "louis"]
    );
    assert_eq!(ids(&s, "Patient?active=true").await, ["jeanne"]);
    assert_eq!(
        ids(&s, "Patient?identifier=urn:oid:1.2.250.1.213.1.4.10|").await,
        ["jeanne"]
    );
    assert!(ids(&s, "Patient?identifier=|2740512345678")
        .await
        .is_empty());
    assert_eq!(ids(&s, "Patient?email=jeanne@exemple.fr").await, ["jeanne"]);
    assert_eq!(
        ids(&s, "Patient?_tag=http://passerelle.fr/tag|demo").await,
        ["jeanne"]
    );
    // Reference: Type/id, id alone, :Type, absolute URL to this server.
    assert_eq!(
        ids(&s, "Patient?general-practitioner=Practitioner/dr-martin").await,
        ["jeanne"]
    );
    assert_eq!(
        ids(&s, "Patient?general-practitioner=dr-durand").await,
        ["louis"]
    );
    assert_eq!(
        ids(&s, "Patient?general-practitioner:Practitioner=dr-durand").await,
        ["louis"]
    );
    assert!(
        ids(&s, "Patient?general-practitioner:Organization=dr-durand")
            .await
            .is_empty()
    );
    // A boolean expression (deceased = deceased[x] exists and is not false).
    put(
        &s,
        json!({"resourceType":"Patient","id":"gone","deceasedDateTime":"2026-11-01"}),
    )
    .await;
    assert_eq!(ids(&s, "Patient?deceased=true").await, ["gone"]);
    assert_eq!(
        ids(&s, "Patient?deceased=false&family=lef").await,
        ["jeanne", "louis"]
    );
    s.http
        .delete(s.url("Patient/gone"))
        .send()
        .await
        .expect("delete");
    // :missing
    assert_eq!(ids(&s, "Patient?birthdate:missing=true").await, ["anon"]);
    assert_eq!(
        ids(&s, "Patient?birthdate:missing=false").await,
        ["jeanne", "louis"]
    );
    // An update replaces the index rows of the previous version.
    put(
        &s,
        json!({"resourceType":"Patient","id":"louis","name":[{"family":"Durand"}]}),
    )
    .await;
    assert_eq!(ids(&s, "Patient?family=lef").await, ["jeanne"]);
    assert_eq!(ids(&s, "Patient?family=durand").await, ["louis"]);
    // A deleted resource is found no more.
    s.http
        .delete(s.url("Patient/jeanne"))
        .send()
        .await
        .expect("delete");
    assert!(ids(&s, "Patient?family=lefevre").await.is_empty());
}

#[tokio::test]
async fn dates_and_periods_are_ranges() {
    let s = TestServer::start().await;
    patients(&s).await;
    // A partial date is a range: 1974 contains 1974-05-12, 1950 is the whole year.
    assert_eq!(ids(&s, "Patient?birthdate=1974").await, ["jeanne"]);
    assert_eq!(ids(&s, "Patient?birthdate=1974-05").await, ["jeanne"]);
    assert!(ids(&s, "Patient?birthdate=1974-06").await.is_empty());
    assert!(
        ids(&s, "Patient?birthdate=1950-06-01").await.is_empty(),
        "a year is not within a day"
    );
    assert_eq!(ids(&s, "Patient?birthdate=ge1960").await, ["jeanne"]);
    assert_eq!(ids(&s, "Patient?birthdate=lt1960").await, ["louis"]);
    assert_eq!(
        ids(&s, "Patient?birthdate=le1950-06-01").await,
        ["louis"],
        "le: the year starts before"
    );
    assert_eq!(ids(&s, "Patient?birthdate=ne1974-05-12").await, ["louis"]);
    assert_eq!(ids(&s, "Patient?birthdate=sa1960").await, ["jeanne"]);
    assert_eq!(ids(&s, "Patient?birthdate=eb1960").await, ["louis"]);
    // Encounters: a finished stay and one still open (no end).
    put(
        &s,
        json!({"resourceType":"Encounter","id":"stay1","status":"finished",
        "class":{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"IMP"},
        "subject":{"reference":"Patient/jeanne"},
        "period":{"start":"2026-11-16T09:00:00+01:00","end":"2026-11-20T18:30:00+01:00"},
        "length":{"value":4.4,"unit":"d","system":"http://unitsofmeasure.org","code":"d"}}),
    )
    .await;
    put(
        &s,
        json!({"resourceType":"Encounter","id":"stay2","status":"in-progress",
        "class":{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"IMP"},
        "subject":{"reference":"Patient/louis"},
        "period":{"start":"2026-11-19T14:00:00+01:00"}}),
    )
    .await;
    assert_eq!(
        ids(&s, "Encounter?date=ge2026-11-20").await,
        ["stay1", "stay2"]
    );
    assert_eq!(
        ids(&s, "Encounter?date=gt2026-11-21").await,
        ["stay2"],
        "an open period goes on"
    );
    assert_eq!(ids(&s, "Encounter?date=lt2026-11-17").await, ["stay1"]);
    assert_eq!(
        ids(&s, "Encounter?date=2026-11").await,
        ["stay1"],
        "stay2 may end after November"
    );
    assert_eq!(
        ids(&s, "Encounter?date=ap2026-11-18").await,
        ["stay1", "stay2"]
    );
    // Quantity and token on the same resource type, and reference to a patient.
    assert_eq!(ids(&s, "Encounter?length=4.4").await, ["stay1"]);
    assert_eq!(
        ids(&s, "Encounter?length=gt4|http://unitsofmeasure.org|d").await,
        ["stay1"]
    );
    assert_eq!(
        ids(&s, "Encounter?length=4").await,
        ["stay1"],
        "4 means [3.5, 4.5)"
    );
    assert!(
        ids(&s, "Encounter?length=4.0").await.is_empty(),
        "4.0 means [3.95, 4.05)"
    );
}

#[tokio::test]
async fn numbers_uris_and_errors() {
    let s = TestServer::start().await;
    put(&s, json!({"resourceType":"RiskAssessment","id":"r1","status":"final","subject":{"reference":"Patient/p"},
        "prediction":[{"probabilityDecimal":0.25}]})).await;
    put(&s, json!({"resourceType":"RiskAssessment","id":"r2","status":"final","subject":{"reference":"Patient/p"},
        "prediction":[{"probabilityDecimal":0.8}]})).await;
    assert_eq!(ids(&s, "RiskAssessment?probability=0.25").await, ["r1"]);
    assert_eq!(
        ids(&s, "RiskAssessment?probability=0.3").await,
        ["r1"],
        "0.3 covers [0.25, 0.35)"
    );
    assert_eq!(ids(&s, "RiskAssessment?probability=gt0.5").await, ["r2"]);
    assert_eq!(
        ids(&s, "RiskAssessment?subject=Patient/p").await,
        ["r1", "r2"]
    );
    put(&s, json!({"resourceType":"ValueSet","id":"vs1","status":"active","url":"http://passerelle.fr/fhir/ValueSet/roles"})).await;
    assert_eq!(
        ids(&s, "ValueSet?url=http://passerelle.fr/fhir/ValueSet/roles").await,
        ["vs1"]
    );
    assert_eq!(
        ids(&s, "ValueSet?url:below=http://passerelle.fr/fhir").await,
        ["vs1"]
    );
    assert_eq!(
        ids(
            &s,
            "ValueSet?url:above=http://passerelle.fr/fhir/ValueSet/roles/v2"
        )
        .await,
        ["vs1"]
    );
    assert!(ids(&s, "ValueSet?url=http://passerelle.fr/fhir")
        .await
        .is_empty());
    // Malformed values are 400 whatever the handling; unknown ones are lenient.
    outcome_of(s.get("RiskAssessment?probability=abc").await, 400).await;
    outcome_of(s.get("Patient?birthdate=yesterday").await, 400).await;
    let strict = s
        .http
        .get(s.url("Patient?name.family=x"))
        .header("prefer", "handling=strict")
        .send()
        .await
        .expect("get");
    outcome_of(strict, 400).await;
}

#[tokio::test]
async fn care_team_participants() {
    let s = TestServer::start().await;
    put(
        &s,
        json!({"resourceType":"CareTeam","id":"ortho","status":"active",
        "subject":{"reference":"Patient/jeanne"},
        "period":{"start":"2026-11-16"},
        "participant":[
            {"member":{"reference":"Practitioner/chirurgien"}},
            {"member":{"reference":"Practitioner/anesthesiste"}},
            {"member":{"reference":"PractitionerRole/pharmacien-ch"}},
            {"member":{"reference":"Organization/ch-tulle"}}]}),
    )
    .await;
    put(
        &s,
        json!({"resourceType":"CareTeam","id":"ville","status":"active",
        "subject":{"reference":"Patient/jeanne"},
        "participant":[{"member":{"reference":"Practitioner/dr-martin"}}]}),
    )
    .await;
    assert_eq!(ids(&s, "CareTeam?patient=jeanne").await, ["ortho", "ville"]);
    assert_eq!(
        ids(&s, "CareTeam?participant=Practitioner/anesthesiste").await,
        ["ortho"]
    );
    assert_eq!(
        ids(
            &s,
            "CareTeam?participant=PractitionerRole/pharmacien-ch&status=active"
        )
        .await,
        ["ortho"]
    );
    assert_eq!(ids(&s, "CareTeam?date=ge2026-11").await, ["ortho"]);
}

#[tokio::test]
async fn chains_and_reverse_chains() {
    let s = TestServer::start().await;
    patients(&s).await;
    put(&s, json!({"resourceType":"Practitioner","id":"dr-martin","name":[{"family":"Martin","given":["Paul"]}],
        "identifier":[{"system":"https://rpps.esante.gouv.fr","value":"10101010101"}]})).await;
    put(
        &s,
        json!({"resourceType":"Encounter","id":"stay1","status":"finished","class":{"code":"IMP"},
        "subject":{"reference":"Patient/jeanne"}}),
    )
    .await;
    put(&s, json!({"resourceType":"Encounter","id":"stay2","status":"in-progress","class":{"code":"IMP"},
        "subject":{"reference":"Patient/louis"}})).await;
    // One level, with and without the target type.
    assert_eq!(
        ids(
            &s,
            "Encounter?subject:Patient.identifier=urn:oid:1.2.250.1.213.1.4.10|2740512345678"
        )
        .await,
        ["stay1"]
    );
    assert_eq!(
        ids(&s, "Encounter?subject.family=lefebvre").await,
        ["stay2"]
    );
    // Two levels: the stays of the patients whose GP has this RPPS number.
    assert_eq!(
        ids(&s, "Encounter?patient.general-practitioner:Practitioner.identifier=https://rpps.esante.gouv.fr|10101010101").await,
        ["stay1"]
    );
    // _has: patients with a stay in progress; nested _has.
    assert_eq!(
        ids(&s, "Patient?_has:Encounter:patient:status=in-progress").await,
        ["louis"]
    );
    assert_eq!(
        ids(
            &s,
            "Practitioner?_has:Patient:general-practitioner:_has:Encounter:patient:status=finished"
        )
        .await,
        ["dr-martin"]
    );
    assert!(ids(
        &s,
        "Practitioner?_has:Patient:general-practitioner:_has:Encounter:patient:status=cancelled"
    )
    .await
    .is_empty());
    // Unknown pieces are errors in strict handling.
    let strict = s
        .http
        .get(s.url("Encounter?subject.nickname=x"))
        .header("prefer", "handling=strict")
        .send()
        .await
        .expect("get");
    outcome_of(strict, 400).await;
}

/// `(matches, includes)` of a search, as `Type/id`, sorted.
async fn by_mode(s: &TestServer, query: &str) -> (Vec<String>, Vec<String>) {
    let bundle = json_of(s.get(query).await, 200).await;
    (
        refs_by_mode(&bundle, "match"),
        refs_by_mode(&bundle, "include"),
    )
}

#[tokio::test]
async fn include_and_revinclude() {
    let s = TestServer::start().await;
    patients(&s).await;
    put(
        &s,
        json!({"resourceType":"Practitioner","id":"dr-martin","name":[{"family":"Martin"}]}),
    )
    .await;
    put(
        &s,
        json!({"resourceType":"Encounter","id":"stay1","status":"finished","class":{"code":"IMP"},
        "subject":{"reference":"Patient/jeanne"},
        "participant":[{"individual":{"reference":"Practitioner/dr-martin"}}]}),
    )
    .await;
    put(&s, json!({"resourceType":"Encounter","id":"stay2","status":"in-progress","class":{"code":"IMP"},
        "subject":{"reference":"Patient/louis"}})).await;
    let (m, i) = by_mode(&s, "Encounter?status=finished&_include=Encounter:subject").await;
    assert_eq!(
        (m, i),
        (
            vec!["Encounter/stay1".to_owned()],
            vec!["Patient/jeanne".to_owned()]
        )
    );
    let (_, i) = by_mode(&s, "Encounter?_id=stay1&_include=Encounter:*").await;
    assert_eq!(i, ["Patient/jeanne", "Practitioner/dr-martin"]);
    let (_, i) = by_mode(
        &s,
        "Encounter?_id=stay1&_include=Encounter:participant:Patient",
    )
    .await;
    assert!(i.is_empty(), "the target type narrows the include");
    let (m, i) = by_mode(&s, "Patient?_id=jeanne,louis&_revinclude=Encounter:subject").await;
    assert_eq!(m, ["Patient/jeanne", "Patient/louis"]);
    assert_eq!(i, ["Encounter/stay1", "Encounter/stay2"]);
    // :iterate follows from what was included: stay -> patient -> GP.
    let (_, i) = by_mode(
        &s,
        "Encounter?_id=stay2&_include=Encounter:subject&_include:iterate=Patient:general-practitioner",
    )
    .await;
    assert_eq!(
        i,
        ["Patient/louis"],
        "dr-durand does not exist: nothing more to include"
    );
    let (_, i) = by_mode(
        &s,
        "Encounter?_id=stay1&_include=Encounter:subject&_include:iterate=Patient:general-practitioner",
    )
    .await;
    assert_eq!(i, ["Patient/jeanne", "Practitioner/dr-martin"]);
    // A resource both matched and included appears once, as a match.
    let (m, i) = by_mode(
        &s,
        "Patient?_id=jeanne&_revinclude=Encounter:subject&_include:iterate=Encounter:subject",
    )
    .await;
    assert_eq!((m.len(), i.len()), (1, 1));
    outcome_of(s.get("Encounter?_include=Encounter").await, 400).await;
}

async fn ordered_ids(s: &TestServer, query: &str) -> (Vec<String>, Value) {
    let bundle = json_of(s.get(query).await, 200).await;
    let ids = bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
        .collect();
    (ids, bundle)
}

#[tokio::test]
async fn sort_total_summary_and_elements() {
    let s = TestServer::start().await;
    patients(&s).await;
    let (by_birth, _) = ordered_ids(&s, "Patient?_sort=birthdate").await;
    assert_eq!(
        by_birth,
        ["louis", "jeanne", "anon"],
        "missing values sort last"
    );
    let (by_birth_desc, _) = ordered_ids(&s, "Patient?_sort=-birthdate").await;
    assert_eq!(by_birth_desc, ["jeanne", "louis", "anon"]);
    let (by_family, _) = ordered_ids(&s, "Patient?_sort=family,-_id").await;
    assert_eq!(by_family, ["louis", "jeanne", "anon"], "lefebvre < lefevre");
    // Sorted pages follow each other.
    let (first, bundle) = ordered_ids(&s, "Patient?_sort=birthdate&_count=2").await;
    assert_eq!(first, ["louis", "jeanne"]);
    assert!(
        bundle.get("total").is_none(),
        "counting costs a query: only on request"
    );
    let (_, accurate) = ordered_ids(&s, "Patient?_sort=birthdate&_count=2&_total=accurate").await;
    assert_eq!(accurate["total"], 3);
    let next = next_link(&bundle).expect("next link");
    // A patient written between the pages sorts before the cursor: the next page
    // neither repeats nor skips anything.
    put(
        &s,
        json!({"resourceType":"Patient","id":"early","birthDate":"1900"}),
    )
    .await;
    let rest = json_of(s.http.get(&next).send().await.expect("next"), 200).await;
    let rest_ids: Vec<&str> = rest["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["resource"]["id"].as_str())
        .collect();
    assert_eq!(rest_ids, ["anon"]);
    // Descending pages, with a resource without the key at the end.
    let (desc1, page) = ordered_ids(&s, "Patient?_sort=-birthdate&_count=3").await;
    assert_eq!(desc1, ["jeanne", "louis", "early"]);
    let next = next_link(&page).expect("next link");
    let desc2 = json_of(s.http.get(&next).send().await.expect("next"), 200).await;
    assert_eq!(desc2["entry"][0]["resource"]["id"], "anon");
    assert_eq!(desc2["entry"].as_array().map(Vec::len), Some(1));
    // _total=none, _summary=count, _count=0.
    let (_, none) = ordered_ids(&s, "Patient?_total=none").await;
    assert!(none.get("total").is_none());
    let (entries, count) = ordered_ids(&s, "Patient?_summary=count").await;
    assert!(entries.is_empty());
    assert_eq!(count["total"], 4, "with the early patient");
    let (entries, zero) = ordered_ids(&s, "Patient?gender=male&_count=0").await;
    assert!(entries.is_empty());
    assert_eq!(zero["total"], 1);
    // _elements and _summary shape the resources, marked SUBSETTED.
    let (_, elements) = ordered_ids(&s, "Patient?_id=jeanne&_elements=birthDate").await;
    let jeanne = &elements["entry"][0]["resource"];
    assert_eq!(jeanne["birthDate"], "1974-05-12");
    assert!(jeanne.get("name").is_none());
    assert!(jeanne["meta"]["tag"].to_string().contains("SUBSETTED"));
    let summary = json_of(s.get("Patient/jeanne?_summary=true").await, 200).await;
    assert!(summary.get("name").is_some() && summary.get("telecom").is_some());
    assert!(
        summary.get("generalPractitioner").is_none(),
        "not a summary element in R4"
    );
    let text = json_of(s.get("Patient/jeanne?_summary=text").await, 200).await;
    assert!(text.get("name").is_none());
    outcome_of(s.get("Patient?_summary=maybe").await, 400).await;
    outcome_of(s.get("Patient?_total=some").await, 400).await;
}

#[tokio::test]
async fn french_guide_parameters() {
    let s = TestServer::start().await;
    let event = |code: &str| {
        json!({"url":"https://interop.esante.gouv.fr/ig/fhir/nde/StructureDefinition/event-type",
        "valueCodeableConcept":{"coding":[{"system":"https://mos.esante.gouv.fr/NOS/TRE_R254-TypeEvenement/FHIR/TRE-R254-TypeEvenement","code":code}]}})
    };
    put(&s, json!({"resourceType":"CommunicationRequest","id":"adm","status":"active","extension":[event("ADM")]})).await;
    put(&s, json!({"resourceType":"CommunicationRequest","id":"sor","status":"active","extension":[event("SOR")]})).await;
    assert_eq!(
        ids(&s, "CommunicationRequest?event-type=SOR").await,
        ["sor"]
    );
    assert_eq!(
        ids(&s, "CommunicationRequest?event-type=ADM,SOR").await,
        ["adm", "sor"]
    );
    put(&s, json!({"resourceType":"CareTeam","id":"cercle","status":"active",
        "period":{"start":"2026-01-10","end":"2026-12-31"},
        "managingOrganization":[{"reference":"Organization/dac-19"}],
        "participant":[{"member":{"reference":"Practitioner/ide"},"period":{"start":"2026-03-01","end":"2026-06-30"}}]})).await;
    assert_eq!(ids(&s, "CareTeam?start=2026-01").await, ["cercle"]);
    assert_eq!(
        ids(&s, "CareTeam?participant-end=lt2026-07").await,
        ["cercle"]
    );
    assert!(ids(&s, "CareTeam?participant-end=gt2026-07")
        .await
        .is_empty());
    assert_eq!(
        ids(&s, "CareTeam?managing-organization=Organization/dac-19").await,
        ["cercle"]
    );
    put(&s, json!({"resourceType":"Patient","id":"p","extension":[{"url":"http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
        "valueAddress":{"city":"Brive-la-Gaillarde","country":"FR"}}]})).await;
    assert_eq!(ids(&s, "Patient?birthplace=brive").await, ["p"]);
    let cs = json_of(s.get("metadata").await, 200).await;
    let params = cs["rest"][0]["resource"]
        .as_array()
        .expect("resources")
        .iter()
        .find(|r| r["type"] == "CommunicationRequest")
        .expect("CommunicationRequest")["searchParam"]
        .to_string();
    assert!(
        params.contains("event-type"),
        "claimed in the CapabilityStatement"
    );
}

#[tokio::test]
async fn patient_compartment_post_search_and_reference_identifiers() {
    let s = TestServer::start().await;
    patients(&s).await;
    put(&s, json!({"resourceType":"Encounter","id":"stay1","status":"finished","class":{"code":"IMP"},
        "subject":{"reference":"Patient/jeanne"},
        "serviceProvider":{"identifier":{"system":"https://finess.esante.gouv.fr","value":"190000042"}}})).await;
    put(&s, json!({"resourceType":"Encounter","id":"stay2","status":"in-progress","class":{"code":"IMP"},
        "subject":{"reference":"Patient/louis"}})).await;
    put(
        &s,
        json!({"resourceType":"CareTeam","id":"ville","status":"active",
        "participant":[{"member":{"reference":"Patient/jeanne"}}]}),
    )
    .await;
    // Patient/[id]/[type]: the resources of that type in the patient's record.
    assert_eq!(ids(&s, "Patient/jeanne/Encounter").await, ["stay1"]);
    assert_eq!(
        ids(&s, "Patient/louis/Encounter?status=in-progress").await,
        ["stay2"]
    );
    assert!(ids(&s, "Patient/louis/Encounter?status=finished")
        .await
        .is_empty());
    // Her care circle (she has a GP) and the team she is a participant of.
    let mut teams = vec![
        passerelle::coordination::circle::circle_id("jeanne"),
        "ville".to_owned(),
    ];
    teams.sort();
    assert_eq!(
        ids(&s, "Patient/jeanne/CareTeam").await,
        teams,
        "as a participant"
    );
    assert_eq!(ids(&s, "Patient/jeanne/Patient").await, ["jeanne"]);
    outcome_of(s.get("Patient/jeanne/Organization").await, 400).await;
    outcome_of(s.get("Encounter/stay1/Patient").await, 404).await;
    // POST [type]/_search with a form body.
    let resp = s
        .http
        .post(s.url("Encounter/_search"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("status=finished&subject=Patient%2Fjeanne")
        .send()
        .await
        .expect("post");
    let bundle = json_of(resp, 200).await;
    assert_eq!(bundle["entry"][0]["resource"]["id"], "stay1");
    // :of-type on identifiers.
    put(
        &s,
        json!({"resourceType":"Patient","id":"typed","identifier":[{"type":{"coding":[
        {"system":"http://terminology.hl7.org/CodeSystem/v2-0203","code":"NH"}]},
        "system":"urn:oid:1.2.250.1.213.1.4.10","value":"2850312345678"}]}),
    )
    .await;
    assert_eq!(ids(&s, "Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|NH|2850312345678").await, ["typed"]);
    assert!(ids(
        &s,
        "Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|2850312345678"
    )
    .await
    .is_empty());
    outcome_of(
        s.get("Patient?identifier:of-type=NH|2850312345678").await,
        400,
    )
    .await;
    // :identifier on a reference that only has an identifier.
    assert_eq!(
        ids(
            &s,
            "Encounter?service-provider:identifier=https://finess.esante.gouv.fr|190000042"
        )
        .await,
        ["stay1"]
    );
}

#[tokio::test]
async fn composite_parameters_match_within_one_element() {
    let s = TestServer::start().await;
    let loinc = |code: &str| json!({"coding":[{"system":"http://loinc.org","code":code}]});
    let mm = |v: i64| json!({"value":v,"unit":"mmHg","system":"http://unitsofmeasure.org","code":"mm[Hg]"});
    put(&s, json!({"resourceType":"Observation","id":"bp","status":"final","code":loinc("85354-9"),
        "component":[{"code":loinc("8480-6"),"valueQuantity":mm(150)},{"code":loinc("8462-4"),"valueQuantity":mm(90)}]})).await;
    put(&s, json!({"resourceType":"Observation","id":"weight","status":"final","code":loinc("29463-7"),
        "valueQuantity":{"value":72.5,"unit":"kg","system":"http://unitsofmeasure.org","code":"kg"}})).await;
    assert_eq!(
        ids(
            &s,
            "Observation?code-value-quantity=http://loinc.org|29463-7$gt70"
        )
        .await,
        ["weight"]
    );
    assert!(ids(
        &s,
        "Observation?code-value-quantity=http://loinc.org|29463-7$lt70"
    )
    .await
    .is_empty());
    // Systolic over 140: yes. Diastolic over 140: no, although 150 and 8462-4 are
    // both in the resource, they are not in the same component.
    assert_eq!(
        ids(
            &s,
            "Observation?component-code-value-quantity=http://loinc.org|8480-6$gt140"
        )
        .await,
        ["bp"]
    );
    assert!(ids(
        &s,
        "Observation?component-code-value-quantity=http://loinc.org|8462-4$gt140"
    )
    .await
    .is_empty());
    assert_eq!(
        ids(&s, "Observation?component-code-value-quantity=http://loinc.org|8462-4$gt140,http://loinc.org|8462-4$lt100").await,
        ["bp"]
    );
    outcome_of(
        s.get("Observation?code-value-quantity=http://loinc.org|29463-7")
            .await,
        400,
    )
    .await;
}

#[tokio::test]
async fn system_search_across_types() {
    let s = TestServer::start().await;
    patients(&s).await;
    put(
        &s,
        json!({"resourceType":"Practitioner","id":"dr-martin","name":[{"family":"Lefort"}],
        "identifier":[{"system":"https://rpps.esante.gouv.fr","value":"10101010101"}]}),
    )
    .await;
    put(
        &s,
        json!({"resourceType":"Practitioner","id":"jeanne","name":[{"family":"Homonyme"}]}),
    )
    .await;
    let (found, bundle) = ordered_ids(&s, "?_type=Patient,Practitioner&family=lef").await;
    assert_eq!(found, ["dr-martin", "jeanne", "louis"]);
    assert_eq!(
        bundle["entry"][0]["fullUrl"],
        s.url("Practitioner/dr-martin")
    );
    // Without _type, every type with the common parameters; the same id in two types.
    let (both, _) = ordered_ids(&s, "?_id=jeanne").await;
    assert_eq!(both, ["jeanne", "jeanne"]);
    // Paging across types with the same id keeps both.
    let (first, page) = ordered_ids(&s, "?_id=jeanne&_count=1").await;
    assert_eq!(first.len(), 1);
    let next = next_link(&page).expect("next link");
    let rest = json_of(s.http.get(&next).send().await.expect("next"), 200).await;
    assert_ne!(page["entry"][0]["fullUrl"], rest["entry"][0]["fullUrl"]);
    outcome_of(s.get("?_type=Nope").await, 400).await;
    outcome_of(s.get("?_type=Patient,Organization&family=lef").await, 400).await;
}

/// A SearchParameter written through the API is put in force and indexes the
/// resources that existed before it (in the background) and those written after.
#[tokio::test]
async fn posted_search_parameters_are_indexed() {
    let s = TestServer::start().await;
    put(&s, json!({"resourceType":"Patient","id":"before","address":[{"city":"Ussel","district":"Haute-Corrèze"}]})).await;
    outcome_of(
        s.http
            .get(s.url("Patient?passerelle-test-district=haute"))
            .header("prefer", "handling=strict")
            .send()
            .await
            .expect("get"),
        400,
    )
    .await;
    put(&s, json!({"resourceType":"SearchParameter","id":"passerelle-test-district",
        "url":"https://passerelle.example.fr/fhir/SearchParameter/passerelle-test-district",
        "name":"PatientDistrict","status":"active","description":"District of the patient's address",
        "code":"passerelle-test-district","base":["Patient"],"type":"string",
        "expression":"Patient.address.district"})).await;
    put(
        &s,
        json!({"resourceType":"Patient","id":"after","address":[{"district":"Haute-Corrèze"}]}),
    )
    .await;
    // The existing patient is reindexed in the background: wait for it.
    let mut found = Vec::new();
    for _ in 0..50 {
        found = ids(&s, "Patient?passerelle-test-district=haute").await;
        if found.len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(found, ["after", "before"]);
    // A subscription on the parameter; the parameter deleted: the subscription is
    // put in error, visibly, rather than matching nothing from then on.
    let criteria = "Patient?passerelle-test-district=haute";
    let subscription = crate::subscriptions::r4_subscription(criteria, "http://127.0.0.1:9/hook");
    let created = json_of(s.post_json("Subscription", &subscription).await, 201).await;
    let id = created["id"].as_str().expect("id").to_owned();
    assert_eq!(created["status"], "active");
    let deleted = s
        .http
        .delete(s.url("SearchParameter/passerelle-test-district"))
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), 204);
    let stopped = json_of(s.get(&format!("Subscription/{id}")).await, 200).await;
    assert_eq!(stopped["status"], "error");
    assert!(
        stopped["error"]
            .as_str()
            .is_some_and(|e| e.contains("no longer apply")),
        "{stopped}"
    );
}

/// Each server has its own parameter table: a SearchParameter written on one
/// database is in force on the instances over it (the second one learns it from
/// its watcher) and on no other server.
#[tokio::test]
async fn search_parameters_are_in_force_per_database() {
    let s = TestServer::start().await;
    let other = TestServer::start().await;
    let second = TestServer::start_on(s.config.clone(), crate::support::test_options()).await;
    put(&s, json!({"resourceType":"SearchParameter","id":"passerelle-test-city-code",
        "url":"https://passerelle.example.fr/fhir/SearchParameter/passerelle-test-city-code",
        "name":"PatientCityCode","status":"active","description":"Postal code of the patient's address",
        "code":"passerelle-test-city-code","base":["Patient"],"type":"string",
        "expression":"Patient.address.postalCode"})).await;
    put(
        &s,
        json!({"resourceType":"Patient","id":"ussel","address":[{"postalCode":"19200"}]}),
    )
    .await;
    let strict = |server: &TestServer| {
        server
            .http
            .get(server.url("Patient?passerelle-test-city-code=192"))
            .header("prefer", "handling=strict")
            .send()
    };
    assert_eq!(
        ids(&s, "Patient?passerelle-test-city-code=192").await,
        ["ussel"]
    );
    outcome_of(strict(&other).await.expect("get"), 400).await;
    // The second instance polls for changes every 5 s.
    let mut status = 0;
    for _ in 0..100 {
        status = strict(&second).await.expect("get").status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        status, 200,
        "the second instance put the parameter in force"
    );
    assert_eq!(
        ids(&second, "Patient?passerelle-test-city-code=192").await,
        ["ussel"]
    );
}

#[tokio::test]
async fn locations_near_a_point() {
    let s = TestServer::start().await;
    put(&s, json!({"resourceType":"Location","id":"tulle","name":"CH de Tulle","position":{"latitude":45.2667,"longitude":1.7700}})).await;
    put(&s, json!({"resourceType":"Location","id":"limoges","name":"CHU de Limoges","position":{"latitude":45.8336,"longitude":1.2611}})).await;
    put(
        &s,
        json!({"resourceType":"Location","id":"nowhere","name":"Sans position"}),
    )
    .await;
    assert_eq!(ids(&s, "Location?near=45.27|1.77|10|km").await, ["tulle"]);
    assert_eq!(
        ids(&s, "Location?near=45.27|1.77|100|km").await,
        ["limoges", "tulle"],
        "about 74 km apart"
    );
    assert!(
        ids(&s, "Location?near=45.27|1.77|45|[mi_i]").await.len() == 1,
        "45 miles is about 72 km"
    );
    outcome_of(s.get("Location?near=91|1.77").await, 400).await;
}

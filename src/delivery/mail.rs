//! Notifications by secure mail, for GPs whose software has no API (the French
//! MSSanté model): an SMTP message with a readable text (who, what, when, where
//! to call back) and the FHIR notification attached. The text is pure and
//! unit-tested; sending is lettre's, over STARTTLS when the server offers it
//! (`smtp://`) or TLS from the start (`smtps://`).

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::Value;

/// Where mail goes out (`PASSERELLE_SMTP_URL`, `PASSERELLE_SMTP_FROM`).
#[derive(Debug, Clone)]
pub struct Smtp {
    /// `smtp://[user:pass@]host[:port]` (STARTTLS when offered) or
    /// `smtps://[user:pass@]host[:port]`.
    pub url: String,
    pub from: String,
}

pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    pub fn new(smtp: &Smtp, timeout: Duration) -> Result<Mailer, String> {
        let url = url::Url::parse(&smtp.url)
            .map_err(|e| format!("PASSERELLE_SMTP_URL '{}': {e}", smtp.url))?;
        let host = url
            .host_str()
            .ok_or_else(|| format!("PASSERELLE_SMTP_URL '{}' names no host", smtp.url))?
            .to_owned();
        let tls = |host: &str| {
            TlsParameters::new(host.to_owned()).map_err(|e| format!("TLS for {host}: {e}"))
        };
        let (tls, default_port) = match url.scheme() {
            "smtp" => (Tls::Opportunistic(tls(&host)?), 25),
            "smtps" => (Tls::Wrapper(tls(&host)?), 465),
            other => {
                return Err(format!(
                    "PASSERELLE_SMTP_URL: scheme '{other}' is not smtp or smtps"
                ))
            }
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(url.port().unwrap_or(default_port))
            .tls(tls)
            .timeout(Some(timeout));
        if !url.username().is_empty() {
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            builder = builder.credentials(Credentials::new(
                decode(url.username()),
                decode(url.password().unwrap_or_default()),
            ));
        }
        let from = smtp
            .from
            .parse()
            .map_err(|e| format!("PASSERELLE_SMTP_FROM '{}': {e}", smtp.from))?;
        Ok(Mailer {
            transport: builder.build(),
            from,
        })
    }

    /// Sends one notice to `to`: the readable text, the notification (`body`,
    /// of MIME type `mime`) attached when there is one, and the `letters`.
    pub async fn send(
        &self,
        to: &str,
        notice: &Notice,
        body: &[u8],
        mime: &str,
        letters: &[Letter],
    ) -> Result<(), String> {
        let to: Mailbox = to.parse().map_err(|e| format!("'{to}': {e}"))?;
        let kind_of = |mime: &str| {
            ContentType::parse(mime).unwrap_or_else(|_| {
                ContentType::parse("application/octet-stream").expect("a MIME type")
            })
        };
        let mut content = MultiPart::mixed().singlepart(SinglePart::plain(notice.text.clone()));
        if !body.is_empty() {
            let extension = if mime.contains("xml") { "xml" } else { "json" };
            content = content.singlepart(
                Attachment::new(format!("notification.{extension}"))
                    .body(body.to_vec(), kind_of(mime)),
            );
        }
        for letter in letters {
            content = content.singlepart(
                Attachment::new(letter.filename.clone())
                    .body(letter.bytes.clone(), kind_of(&letter.mime)),
            );
        }
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(notice.subject.clone())
            .multipart(content)
            .map_err(|e| e.to_string())?;
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// A document attached to a mail (a discharge letter).
#[derive(Debug, PartialEq, Eq)]
pub struct Letter {
    pub filename: String,
    pub mime: String,
    pub bytes: Vec<u8>,
}

/// Bytes of documents attached to one mail at most.
const MAX_LETTER_BYTES: usize = 10 * 1024 * 1024;

/// The stay a notice is about, when its documents go with it: a discharge (SOR)
/// or a document filed about the stay (DOC).
pub fn stay_with_letters(resource: &Value) -> Option<&str> {
    let event = resource["extension"]
        .as_array()?
        .iter()
        .find_map(|e| e["valueCodeableConcept"]["coding"][0]["code"].as_str())?;
    if !matches!(event, "SOR" | "DOC") {
        return None;
    }
    resource["encounter"]["reference"]
        .as_str()?
        .strip_prefix("Encounter/")
}

/// The documents' inline attachments (`content.attachment.data`), as letters,
/// up to a total size.
pub fn letters(documents: &[Value]) -> Vec<Letter> {
    use base64::Engine;
    let mut found = Vec::new();
    let mut total = 0;
    for (n, attachment) in documents
        .iter()
        .filter(|d| d["status"] != "entered-in-error")
        .flat_map(|d| d["content"].as_array().into_iter().flatten())
        .map(|c| &c["attachment"])
        .enumerate()
    {
        let Some(bytes) = attachment["data"]
            .as_str()
            .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok())
        else {
            continue;
        };
        total += bytes.len();
        if total > MAX_LETTER_BYTES {
            break;
        }
        let mime = attachment["contentType"]
            .as_str()
            .unwrap_or("application/octet-stream")
            .to_owned();
        let extension = match mime.as_str() {
            "application/pdf" => "pdf",
            "text/plain" => "txt",
            _ => "bin",
        };
        let title: String = attachment["title"]
            .as_str()
            .unwrap_or("document")
            .chars()
            .map(|c| {
                if c.is_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        found.push(Letter {
            filename: format!("{title}-{}.{extension}", n + 1),
            mime,
            bytes,
        });
    }
    found
}

/// What a mail says of a notification.
#[derive(Debug, PartialEq, Eq)]
pub struct Notice {
    pub subject: String,
    pub text: String,
}

fn patient_line(patient: &Value) -> Option<String> {
    let name = &patient["name"][0];
    let given: Vec<&str> = name["given"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let mut line = format!("{} {}", given.join(" "), name["family"].as_str()?)
        .trim()
        .to_owned();
    if let Some(birth) = patient["birthDate"].as_str() {
        line.push_str(&format!(", né(e) le {birth}"));
    }
    if let Some(ins) = patient["identifier"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| {
            i["system"]
                .as_str()
                .is_some_and(|s| s.starts_with("urn:oid:1.2.250.1.213.1.4."))
        })
        .and_then(|i| i["value"].as_str())
    {
        line.push_str(&format!(", INS {ins}"));
    }
    Some(line)
}

/// The readable text of a notification about `resource` (none: the subscription
/// sends no content) through Subscription `sub_id`, on the server at `base`.
pub fn notice(resource: Option<&Value>, sub_id: &str, base: &str) -> Notice {
    let footer = format!(
        "\n\nCette notification vous est adressée par Passerelle (abonnement Subscription/{sub_id}). \
         La notification FHIR est jointe."
    );
    let Some(resource) = resource else {
        return Notice {
            subject: "Passerelle : nouvelle notification".to_owned(),
            text: format!("Une ressource suivie a changé.{footer}"),
        };
    };
    let res_type = resource["resourceType"].as_str().unwrap_or("Resource");
    let id = resource["id"].as_str().unwrap_or_default();
    let link = format!("{base}/{res_type}/{id}");
    let contained = |local: &str| crate::fhir::contained(resource, local);
    let event = resource["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|e| e["valueCodeableConcept"]["coding"][0]["display"].as_str());
    let mut lines = Vec::new();
    let subject = match event {
        Some(event) => {
            lines.push(format!("Événement : {event}"));
            format!("Passerelle : {event}")
        }
        None => format!(
            "Passerelle : {res_type} {}",
            resource["status"].as_str().unwrap_or("modifié")
        ),
    };
    if let Some(patient) = contained("patient").and_then(patient_line) {
        lines.push(format!("Patient : {patient}"));
    }
    if let Some(stay) = contained("stay") {
        let period = &stay["period"];
        if let Some(start) = period["start"].as_str() {
            let end = period["end"]
                .as_str()
                .map(|e| format!(" au {e}"))
                .unwrap_or_default();
            lines.push(format!("Séjour : du {start}{end}"));
        }
        if let Some(disposition) = stay["hospitalization"]["dischargeDisposition"]["text"].as_str()
        {
            lines.push(format!("Mode de sortie : {disposition}"));
        }
    }
    if let Some(from) = resource["requester"]["display"]
        .as_str()
        .or(resource["requester"]["reference"].as_str())
    {
        lines.push(format!("Émetteur : {from}"));
    }
    if let Some(status) = resource["status"].as_str() {
        lines.push(format!("Statut : {status}"));
    }
    lines.push(format!("Consulter : {link}"));
    if event.is_some() {
        lines.push(format!(
            "Accuser réception : POST {base}/Task avec focus {res_type}/{id} (status completed)"
        ));
    }
    Notice {
        subject,
        text: format!("{}{footer}", lines.join("\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_discharge_notice_says_who_what_when_and_where_to_call_back() {
        let request = json!({"resourceType": "CommunicationRequest", "id": "n1", "status": "active",
            "extension": [{"url": "https://interop.esante.gouv.fr/ig/fhir/nde/StructureDefinition/event-type",
                "valueCodeableConcept": {"coding": [{"code": "SOR", "display": "Sortie d'un patient de l'établissement de santé"}]}}],
            "contained": [
                {"resourceType": "Patient", "id": "patient", "birthDate": "1948-03-19",
                 "name": [{"family": "Delpech", "given": ["Marcel"]}],
                 "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10", "value": "148031927209929"}]},
                {"resourceType": "Encounter", "id": "stay",
                 "period": {"start": "2026-11-16T10:15:00+01:00", "end": "2026-11-20T19:40:00+01:00"},
                 "hospitalization": {"dischargeDisposition": {"text": "Retour à domicile"}}}],
            "requester": {"reference": "Organization/ch", "display": "CH de Brive"}});
        let n = notice(
            Some(&request),
            "nde-1",
            "https://passerelle.example.fr/fhir",
        );
        assert_eq!(
            n.subject,
            "Passerelle : Sortie d'un patient de l'établissement de santé"
        );
        for part in [
            "Patient : Marcel Delpech, né(e) le 1948-03-19, INS 148031927209929",
            "Séjour : du 2026-11-16T10:15:00+01:00 au 2026-11-20T19:40:00+01:00",
            "Mode de sortie : Retour à domicile",
            "Émetteur : CH de Brive",
            "Consulter : https://passerelle.example.fr/fhir/CommunicationRequest/n1",
            "focus CommunicationRequest/n1",
            "Subscription/nde-1",
        ] {
            assert!(n.text.contains(part), "{part} in {}", n.text);
        }
    }

    #[test]
    fn the_letters_of_a_discharge_go_with_it() {
        let sor = json!({"resourceType": "CommunicationRequest",
            "extension": [{"valueCodeableConcept": {"coding": [{"code": "SOR"}]}}],
            "encounter": {"reference": "Encounter/s1"}});
        assert_eq!(stay_with_letters(&sor), Some("s1"));
        let mut adm = sor.clone();
        adm["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] = json!("ADM");
        assert_eq!(stay_with_letters(&adm), None);
        let letter = json!({"resourceType": "DocumentReference", "status": "current",
            "content": [{"attachment": {"contentType": "text/plain", "title": "Lettre de liaison",
                "data": "UmV0b3VyIMOgIGRvbWljaWxl"}}]});
        let found = letters(std::slice::from_ref(&letter));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].filename, "Lettre_de_liaison-1.txt");
        assert_eq!(
            String::from_utf8_lossy(&found[0].bytes),
            "Retour à domicile"
        );
        let mut wrong = letter;
        wrong["status"] = json!("entered-in-error");
        assert!(letters(&[wrong]).is_empty());
    }

    #[test]
    fn any_resource_gets_a_plain_notice() {
        let task = json!({"resourceType": "Task", "id": "t1", "status": "accepted"});
        let n = notice(Some(&task), "referral-1", "https://p.example/fhir");
        assert_eq!(n.subject, "Passerelle : Task accepted");
        assert!(n.text.contains("https://p.example/fhir/Task/t1"));
        assert!(notice(None, "s", "b").text.contains("Subscription/s"));
    }
}

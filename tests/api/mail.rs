//! Notices by secure mail, through a real SMTP listener started by the test: a
//! GP whose only Endpoint is secure mail gets the discharge as a readable mail
//! with the FHIR notification attached; without an SMTP server, email channels
//! are refused.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::stays::{discharged, put, stay};
use crate::subscriptions::r4_subscription;
use crate::support::{fresh_database, json_of, outcome_of, test_options, TestServer};

/// A minimal SMTP server: accepts every message and hands over its recipients
/// and its DATA.
struct SmtpListener {
    url: String,
    messages: mpsc::UnboundedReceiver<(Vec<String>, String)>,
}

impl SmtpListener {
    async fn start() -> SmtpListener {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("smtp://{}", listener.local_addr().expect("addr"));
        let (tx, messages) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let (read, mut write) = socket.into_split();
                    let mut lines = BufReader::new(read).lines();
                    let _ = write.write_all(b"220 test ESMTP\r\n").await;
                    let mut recipients = Vec::new();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
                        let reply: &[u8] = match verb.as_str() {
                            "EHLO" | "HELO" => b"250-test\r\n250 8BITMIME\r\n",
                            "RCPT" => {
                                recipients.push(line[8..].trim_matches(['<', '>', ' ']).to_owned());
                                b"250 OK\r\n"
                            }
                            "DATA" => {
                                let _ = write.write_all(b"354 go on\r\n").await;
                                let mut data = String::new();
                                while let Ok(Some(l)) = lines.next_line().await {
                                    if l == "." {
                                        break;
                                    }
                                    data.push_str(&l);
                                    data.push('\n');
                                }
                                let _ = tx.send((std::mem::take(&mut recipients), data));
                                b"250 queued\r\n"
                            }
                            "QUIT" => {
                                let _ = write.write_all(b"221 bye\r\n").await;
                                break;
                            }
                            _ => b"250 OK\r\n",
                        };
                        let _ = write.write_all(reply).await;
                    }
                });
            }
        });
        SmtpListener { url, messages }
    }

    async fn next(&mut self) -> (Vec<String>, String) {
        tokio::time::timeout(Duration::from_secs(10), self.messages.recv())
            .await
            .expect("a mail within 10 s")
            .expect("the listener runs")
    }
}

/// Decodes the base64 and quoted-printable parts of a mail enough to search it.
fn readable(data: &str) -> String {
    use base64::Engine;
    let mut out = data.replace("=\n", "");
    for block in data.split("\n\n") {
        // A part's body runs until the next boundary.
        let joined: String = block.lines().take_while(|l| !l.starts_with("--")).collect();
        if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(joined.trim()) {
            out.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    out
}

/// A server that sends mail through `smtp`, with the GP `stay-gp` of
/// `stay-patient` reachable by secure mail only.
async fn mailing_server(smtp: &SmtpListener) -> TestServer {
    let mut options = test_options();
    options.rules.endpoints.email = true;
    options.delivery.smtp = Some(passerelle::delivery::mail::Smtp {
        url: smtp.url.clone(),
        from: "Passerelle <passerelle@ch-tulle.example.fr>".to_owned(),
    });
    let s = TestServer::start_on(fresh_database().await, options).await;
    for resource in [
        json!({"resourceType": "Practitioner", "id": "stay-gp", "name": [{"family": "Lenoir", "given": ["Claire"]}]}),
        json!({"resourceType": "Endpoint", "id": "stay-gp-mss", "status": "active",
            "connectionType": {"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type", "code": "secure-email"},
            "payloadType": [{"text": "MSSanté"}], "address": "mailto:claire.lenoir@medecin.mssante.fr"}),
        json!({"resourceType": "PractitionerRole", "id": "stay-gp-role", "active": true,
            "practitioner": {"reference": "Practitioner/stay-gp"}, "endpoint": [{"reference": "Endpoint/stay-gp-mss"}]}),
        json!({"resourceType": "Patient", "id": "stay-patient",
            "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10", "value": "280017512345610"}],
            "name": [{"family": "Chabrol", "given": ["Henri"]}],
            "generalPractitioner": [{"reference": "Practitioner/stay-gp"}]}),
    ] {
        put(&s, &resource, 201).await;
    }
    s
}

#[tokio::test]
async fn a_gp_with_secure_mail_only_gets_the_discharge_by_mail() {
    let mut smtp = SmtpListener::start().await;
    let s = mailing_server(&smtp).await;
    put(&s, &stay("mail1", "in-progress"), 201).await;
    let (to, _) = smtp.next().await;
    assert_eq!(to, ["claire.lenoir@medecin.mssante.fr"]);
    // The discharge and its letter in one transaction: SOR and DOC, each mail
    // with the letter attached.
    use base64::Engine;
    let letter_text = "Lettre de liaison : retour à domicile, kinésithérapie 3 fois par semaine.";
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": discharged("mail1"), "request": {"method": "PUT", "url": "Encounter/mail1"}},
        {"resource": {"resourceType": "DocumentReference", "status": "current",
            "type": {"coding": [{"system": "http://loinc.org", "code": "11490-0"}]},
            "subject": {"reference": "Patient/stay-patient"},
            "content": [{"attachment": {"contentType": "text/plain", "title": "Lettre de liaison",
                "data": base64::engine::general_purpose::STANDARD.encode(letter_text)}}],
            "context": {"encounter": [{"reference": "Encounter/mail1"}]}},
         "request": {"method": "POST", "url": "DocumentReference"}}]});
    json_of(s.post_json("", &bundle).await, 200).await;
    let (mut sor, mut doc) = (
        readable(&smtp.next().await.1),
        readable(&smtp.next().await.1),
    );
    if !sor.contains("Sortie d'un patient") {
        std::mem::swap(&mut sor, &mut doc);
    }
    for part in [
        "Sortie d'un patient",
        "Henri Chabrol",
        "INS 280017512345610",
        "Mode de sortie : Retour",
        "notification.json",
        "nde-notificationrequest",
        "Lettre_de_liaison-1.txt",
        letter_text,
    ] {
        assert!(sor.contains(part), "{part} in {sor}");
    }
    assert!(doc.contains(letter_text), "{doc}");
}

#[tokio::test]
async fn email_channels_need_an_smtp_server() {
    let s = TestServer::start().await;
    let mut sub = r4_subscription("Encounter?status=finished", "mailto:dr@medecin.mssante.fr");
    sub["channel"]["type"] = json!("email");
    let refused = outcome_of(s.post_json("Subscription", &sub).await, 422).await;
    assert!(
        refused.to_string().contains("PASSERELLE_SMTP_URL"),
        "{refused}"
    );
    // With one, a mailto: address is required.
    let mut options = test_options();
    options.rules.endpoints.email = true;
    let s = TestServer::start_on(fresh_database().await, options).await;
    json_of(s.post_json("Subscription", &sub).await, 201).await;
    sub["channel"]["endpoint"] = json!("https://cabinet.example/hook");
    outcome_of(s.post_json("Subscription", &sub).await, 422).await;
}

/// The GP who asked for a referral, reachable by mail only, is told of each step
/// of its Task by mail.
#[tokio::test]
async fn a_referrals_requester_hears_of_its_task_by_mail() {
    let mut smtp = SmtpListener::start().await;
    let s = mailing_server(&smtp).await;
    put(
        &s,
        &json!({"resourceType": "ServiceRequest", "id": "mail-ref", "status": "active", "intent": "order",
            "subject": {"reference": "Patient/stay-patient"},
            "requester": {"reference": "Practitioner/stay-gp"},
            "performer": [{"reference": "Organization/smr"}]}),
        201,
    )
    .await;
    let task = |status: &str| {
        json!({"resourceType": "Task", "id": "mail-ref-task", "status": status, "intent": "order",
            "basedOn": [{"reference": "ServiceRequest/mail-ref"}],
            "owner": {"reference": "Organization/smr"}})
    };
    put(&s, &task("requested"), 201).await;
    let (to, data) = smtp.next().await;
    assert_eq!(to, ["claire.lenoir@medecin.mssante.fr"]);
    assert!(
        readable(&data).contains("Passerelle : Task requested"),
        "{data}"
    );
    put(&s, &task("received"), 200).await;
    assert!(readable(&smtp.next().await.1).contains("Task received"));
}

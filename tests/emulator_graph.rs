//! Microsoft Graph's risk detections on the API emulator, over real HTTP: Graph tokens
//! against Management API tokens, Graph's error envelope, role and licence refusals,
//! `$filter` bounds, snapshot paging through `@odata.nextLink`, throttling, the BOM fault,
//! and a detection updated after the collector's watermark.

use std::collections::HashSet;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use o365_connector::clock::Clock;
use o365_connector::emulator::api::scenario::{
    FaultScenario, GraphFaultScenario, Scenario, TenantScenario,
};
use o365_connector::emulator::api::{ApiEmulator, ApiEmulatorConfig};
use serde_json::{Value, json};

const TENANT: &str = "41463f53-8812-40f4-890f-865bf6e35190";
const CLIENT: &str = "a1b2c3d4-0000-4000-8000-00000000c11e";
const SECRET: &str = "graph-test-secret";
const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";
const MANAGEMENT_SCOPE: &str = "https://manage.office.com/.default";
const DETECTIONS: &str = "/v1.0/identityProtection/riskDetections";

struct Graph {
    emulator: ApiEmulator,
    clock: Clock,
    http: reqwest::Client,
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    bytes: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or(Value::Null)
    }

    fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

impl Graph {
    async fn start(tenant: TenantScenario) -> Self {
        let clock = Clock::manual("2026-12-01T08:00:00Z".parse().unwrap());
        let emulator = ApiEmulator::start(ApiEmulatorConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            scenario: Scenario::single_tenant(tenant),
            tls: None,
            webhook_ca: None,
            clock: clock.clone(),
        })
        .await
        .unwrap();
        Self {
            emulator,
            clock,
            http: reqwest::Client::new(),
        }
    }

    /// The JSON lines an `/_emulator/…` inspection endpoint answers at `path`.
    async fn inspect(&self, path: &str) -> Vec<Value> {
        let url = format!("{}{path}", self.emulator.base_url());
        let text = self
            .http
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .map(|line| serde_json::from_str::<Value>(line).unwrap())
            .collect()
    }

    async fn default() -> Self {
        Self::start(TenantScenario::with_secret(TENANT, CLIENT, SECRET)).await
    }

    async fn token(&self, scope: &str) -> String {
        let url = format!("{}/{TENANT}/oauth2/v2.0/token", self.emulator.base_url());
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT),
            ("client_secret", SECRET),
            ("scope", scope),
        ];
        let bytes = self
            .http
            .post(url)
            .form(&form)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        // The bom_bodies fault marks token answers too.
        let json = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
        let answer: Value = serde_json::from_slice(json).unwrap();
        answer["access_token"]
            .as_str()
            .expect("a token")
            .to_string()
    }

    async fn get(&self, url: &str, token: &str) -> Answer {
        let response = self.http.get(url).bearer_auth(token).send().await.unwrap();
        Answer {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            bytes: response.bytes().await.unwrap().to_vec(),
        }
    }

    fn url(&self, query: &str) -> String {
        format!("{}{DETECTIONS}?{query}", self.emulator.base_url())
    }

    async fn control(&self, command: Value) -> Value {
        let url = format!("{}/_emulator/control", self.emulator.base_url());
        let answer = self.http.post(url).json(&command).send().await.unwrap();
        assert_eq!(answer.status(), 200);
        answer.json().await.unwrap()
    }

    /// Follows `@odata.nextLink` verbatim from `url`; every page's `value` in order.
    async fn all_pages(&self, url: String, token: &str) -> (Vec<Value>, usize) {
        let mut items = Vec::new();
        let mut pages = 0;
        let mut next = Some(url);
        while let Some(url) = next {
            let answer = self.get(&url, token).await;
            assert_eq!(
                answer.status,
                200,
                "{}",
                String::from_utf8_lossy(&answer.bytes)
            );
            let body = answer.json();
            items.extend(body["value"].as_array().unwrap().iter().cloned());
            next = body["@odata.nextLink"].as_str().map(str::to_string);
            pages += 1;
            assert!(pages < 100, "paging does not end");
        }
        (items, pages)
    }
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn filter(operator: &str, instant: &str) -> String {
    format!(
        "$filter=lastUpdatedDateTime%20{operator}%20{instant}&$orderby=lastUpdatedDateTime%20asc"
    )
}

#[tokio::test]
async fn graph_and_management_tokens_carry_their_own_audience_and_roles_only() {
    let graph = Graph::default().await;
    let graph_claims = claims(&graph.token(GRAPH_SCOPE).await);
    assert_eq!(graph_claims["aud"], "https://graph.microsoft.com");
    assert_eq!(graph_claims["roles"], json!(["IdentityRiskEvent.Read.All"]));
    assert_eq!(graph_claims["tid"], TENANT);
    let management_claims = claims(&graph.token(MANAGEMENT_SCOPE).await);
    assert_eq!(management_claims["aud"], "https://manage.office.com");
    assert_eq!(
        management_claims["roles"],
        json!(["ActivityFeed.Read", "ActivityFeed.ReadDlp"])
    );
    for scope in [
        "https://graph.microsoft.us/.default",
        "https://dod-graph.microsoft.us/.default",
    ] {
        let audience = scope.trim_end_matches("/.default");
        assert_eq!(claims(&graph.token(scope).await)["aud"], audience);
    }
}

#[tokio::test]
async fn each_api_refuses_the_others_token_with_its_own_envelope() {
    let graph = Graph::default().await;
    let management = graph.token(MANAGEMENT_SCOPE).await;
    let answer = graph.get(&graph.url("$top=5"), &management).await;
    assert_eq!(answer.status, 401);
    let error = &answer.json()["error"];
    assert_eq!(error["code"], "InvalidAuthenticationToken");
    let inner = &error["innerError"];
    for key in ["date", "request-id", "client-request-id"] {
        assert!(inner[key].is_string(), "innerError.{key} missing: {error}");
    }
    assert_eq!(
        answer.headers["request-id"].to_str().unwrap(),
        inner["request-id"].as_str().unwrap()
    );
    // The Management API refuses a Graph token.
    let graph_token = graph.token(GRAPH_SCOPE).await;
    let feed = format!(
        "{}/api/v1.0/{TENANT}/activity/feed/subscriptions/list",
        graph.emulator.base_url()
    );
    let answer = graph.get(&feed, &graph_token).await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.code(), "InvalidAuthenticationToken");
}

#[tokio::test]
async fn without_the_role_or_the_licence_graph_answers_403() {
    let graph = Graph::default().await;
    graph
        .control(json!({"graph_access": {"tenant": TENANT, "graph_roles": ["User.Read.All"]}}))
        .await;
    let token = graph.token(GRAPH_SCOPE).await;
    let answer = graph.get(&graph.url("$top=5"), &token).await;
    assert_eq!(
        (answer.status, answer.code()),
        (403, "Authorization_RequestDenied".into())
    );

    graph
        .control(json!({"graph_access": {"tenant": TENANT, "graph_roles": ["IdentityRiskEvent.Read.All"], "entra_p2": false}}))
        .await;
    let token = graph.token(GRAPH_SCOPE).await;
    let answer = graph.get(&graph.url("$top=5"), &token).await;
    assert_eq!((answer.status, answer.code()), (403, "Forbidden".into()));
    assert!(
        answer.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not licensed")
    );
}

#[tokio::test]
async fn paging_returns_every_detection_once_in_order_even_while_new_ones_arrive() {
    let mut tenant = TenantScenario::with_secret(TENANT, CLIENT, SECRET);
    tenant.risk_detections.initial = 7;
    tenant.risk_detections.initial_spread_hours = 3;
    let graph = Graph::start(tenant).await;
    let token = graph.token(GRAPH_SCOPE).await;
    let first = graph
        .get(
            &graph.url(&format!("{}&$top=3", filter("ge", "2026-11-30T00:00:00Z"))),
            &token,
        )
        .await;
    let body = first.json();
    assert_eq!(body["value"].as_array().unwrap().len(), 3);
    assert_eq!(
        body["@odata.context"],
        "https://graph.microsoft.com/v1.0/$metadata#identityProtection/riskDetections"
    );
    let next = body["@odata.nextLink"].as_str().unwrap().to_string();
    assert!(next.starts_with(&format!("{}{DETECTIONS}?", graph.emulator.base_url())));
    assert!(next.contains("$skiptoken="), "{next}");
    // Published between pages, last updated after every listed one: not in this listing.
    graph.clock.advance(Duration::minutes(1));
    graph
        .control(json!({"publish_risk_detections": {"tenant": TENANT, "count": 2}}))
        .await;
    let (rest, pages) = graph.all_pages(next, &token).await;
    assert_eq!(pages, 2, "3 + 3 + 1");
    let mut listed: Vec<Value> = body["value"].as_array().unwrap().clone();
    listed.extend(rest);
    let ids: Vec<&str> = listed
        .iter()
        .map(|item| item["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 7, "{ids:?}");
    let published = graph.emulator.state().graph.risk_detections(Some(TENANT));
    assert_eq!(published.len(), 9);
    let first_seven: HashSet<&str> = published[..7].iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids.iter().copied().collect::<HashSet<_>>(), first_seven);
    let times: Vec<DateTime<Utc>> = listed
        .iter()
        .map(|item| {
            item["lastUpdatedDateTime"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(times.windows(2).all(|pair| pair[0] <= pair[1]), "{times:?}");
    // A fresh listing sees all nine; the request log counted every poll for the tenant.
    let (all, _) = graph
        .all_pages(
            graph.url(&format!(
                "{}&$top=500",
                filter("ge", "2026-11-30T00:00:00Z")
            )),
            &token,
        )
        .await;
    assert_eq!(all.len(), 9);
    let polls = graph
        .inspect("/_emulator/requests")
        .await
        .into_iter()
        .filter(|record| record["endpoint"] == DETECTIONS && record["tenant"] == TENANT)
        .count();
    assert_eq!(polls, 4);
}

#[tokio::test]
async fn ge_includes_the_instant_gt_excludes_it_and_top_is_bounded() {
    let mut tenant = TenantScenario::with_secret(TENANT, CLIENT, SECRET);
    tenant.risk_detections.initial = 3;
    tenant.risk_detections.initial_spread_hours = 2;
    let graph = Graph::start(tenant).await;
    let token = graph.token(GRAPH_SCOPE).await;
    let published = graph.emulator.state().graph.risk_detections(Some(TENANT));
    let middle = &published[1];
    let instant = &middle.last_updated_date_time;
    let (at_or_after, _) = graph
        .all_pages(graph.url(&filter("ge", instant)), &token)
        .await;
    assert_eq!(at_or_after.len(), 2);
    assert_eq!(at_or_after[0]["id"], middle.id.as_str());
    let (after, _) = graph
        .all_pages(graph.url(&filter("gt", instant)), &token)
        .await;
    assert_eq!(after.len(), 1);
    assert_ne!(after[0]["id"], middle.id.as_str());
    for query in ["$top=501", "$top=0", "$filter=riskLevel%20eq%20'high'"] {
        let answer = graph.get(&graph.url(query), &token).await;
        assert_eq!(
            (answer.status, answer.code()),
            (400, "BadRequest".into()),
            "{query}"
        );
    }
}

#[tokio::test]
async fn throttling_answers_429_with_retry_after_then_serves_again() {
    let mut tenant = TenantScenario::with_secret(TENANT, CLIENT, SECRET);
    tenant.faults = FaultScenario {
        graph_throttle: Some(GraphFaultScenario {
            next_requests: 1,
            retry_after_secs: 7,
            ..GraphFaultScenario::default()
        }),
        ..FaultScenario::default()
    };
    let graph = Graph::start(tenant).await;
    let token = graph.token(GRAPH_SCOPE).await;
    let answer = graph.get(&graph.url("$top=5"), &token).await;
    assert_eq!(
        (answer.status, answer.code()),
        (429, "TooManyRequests".into())
    );
    assert_eq!(answer.headers["retry-after"], "7");
    assert_eq!(graph.get(&graph.url("$top=5"), &token).await.status, 200);
}

#[tokio::test]
async fn the_bom_fault_marks_graph_bodies_of_the_tenant() {
    let mut tenant = TenantScenario::with_secret(TENANT, CLIENT, SECRET);
    tenant.risk_detections.initial = 1;
    tenant.faults.bom_bodies = true;
    let graph = Graph::start(tenant).await;
    let token = graph.token(GRAPH_SCOPE).await;
    let answer = graph.get(&graph.url("$top=5"), &token).await;
    assert_eq!(answer.status, 200);
    assert!(answer.bytes.starts_with(b"\xEF\xBB\xBF{\"@odata.context\""));
    let body: Value = serde_json::from_slice(&answer.bytes[3..]).unwrap();
    assert_eq!(body["value"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_detection_updated_after_the_watermark_reappears_byte_for_byte() {
    let mut tenant = TenantScenario::with_secret(TENANT, CLIENT, SECRET);
    tenant.risk_detections.initial = 4;
    tenant.risk_detections.initial_spread_hours = 1;
    let graph = Graph::start(tenant).await;
    let token = graph.token(GRAPH_SCOPE).await;
    let (first, _) = graph
        .all_pages(graph.url(&filter("ge", "2026-11-30T00:00:00Z")), &token)
        .await;
    let watermark = first.last().unwrap()["lastUpdatedDateTime"]
        .as_str()
        .unwrap()
        .to_string();
    let oldest = first[0]["id"].as_str().unwrap().to_string();
    assert_eq!(first[0]["riskState"], "atRisk");
    graph.clock.advance(Duration::minutes(5));
    let updated = graph
        .control(json!({"update_risk_detection": {"tenant": TENANT, "id": oldest}}))
        .await;
    assert_eq!(updated["ok"], true);
    let answer = graph
        .get(&graph.url(&filter("gt", &watermark)), &token)
        .await;
    let body = answer.json();
    let value = body["value"].as_array().unwrap();
    assert_eq!(value.len(), 1, "{body}");
    assert_eq!(value[0]["id"], oldest.as_str());
    assert_eq!(value[0]["riskState"], "remediated");
    // The element is served byte for byte as the inspection shows it.
    let record = graph
        .inspect(&format!("/_emulator/risk_detections?tenant_id={TENANT}"))
        .await
        .into_iter()
        .find(|record| record["id"] == oldest.as_str())
        .unwrap();
    let exact = record["json"].as_str().unwrap();
    let text = String::from_utf8(answer.bytes.clone()).unwrap();
    assert!(text.contains(&format!("\"value\":[{exact}]")), "{text}");
    assert_eq!(
        record["lastUpdatedDateTime"],
        value[0]["lastUpdatedDateTime"]
    );
}

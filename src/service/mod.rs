//! The FHIR interactions, independent of HTTP: each takes parsed input, runs in one
//! database transaction, and returns what happened. The HTTP layer maps requests to
//! these calls and their results to responses.

pub mod bundle;
pub mod capability;
mod circle;
mod escalation;
pub mod export;
pub mod held;
mod history;
pub mod jobs;
mod notices;
mod notify;
mod populations;
mod read;
mod search_parameters;
mod searches;
mod statistics;
pub mod subscriptions;
mod turnaround;
pub mod write;
mod writes;

use std::sync::Arc;

use crate::error::FhirResult;
use crate::search;
use crate::search::params::ParamTable;

pub use circle::care_circle;
pub use escalation::{escalate_due, watch_escalations};
pub use history::{history, history_bundle, HistoryPage};
pub use notify::Fact;
pub use read::{read, read_joined, vread};
use search_parameters::definitions_changed;
pub use search_parameters::{
    load_profiles, load_search_parameters, reindex, watch_definitions, Fingerprints,
};
pub use searches::{everything, search, searchset, Scope, SearchPage};
pub use statistics::{report_database_settings, watch_statistics};
pub use turnaround::turnaround;
pub use write::{Change, ChangeKind, Written};
use writes::{conditional_match, Matches};
pub use writes::{
    plan, subscription_status, write, PatchTarget, Planned, WriteRecord, WriteRequest,
};

/// The server's policies that every write obeys, whoever asks for it, and the
/// definitions in force that every interaction reads.
#[derive(Clone, Default)]
pub struct Rules {
    /// Which subscription endpoints may be called.
    pub endpoints: crate::subscription::EndpointPolicy,
    /// Which Encounters are hospital stays.
    pub stays: crate::coordination::StayRules,
    /// When an unacknowledged notification request is escalated.
    pub acks: crate::coordination::acknowledgement::AckRules,
    pub catalog: Arc<Catalog>,
    /// The profiles writes are checked against and what is known of them.
    pub profiles: Arc<crate::profile::ProfileRules>,
}

/// The definitions in force on one server: the search parameters (replaced whole
/// when a SearchParameter changes), the subscription topics, and the
/// subscriptions compiled against both. Each server has its own.
pub struct Catalog {
    pub params: search::params::Registry,
    pub topics: Vec<crate::subscription::Topic>,
    pub compiled: crate::subscription::CompiledCache,
}

impl Catalog {
    /// The standard search parameters and the server's topics, plus `extra_topics`
    /// (a Bundle or one SubscriptionTopic, JSON) when given.
    pub fn new(extra_topics: Option<&str>) -> FhirResult<Catalog> {
        let params = search::params::Registry::default();
        let topics = crate::subscription::topic::load(&params.current(), extra_topics)?;
        Ok(Catalog {
            params,
            topics,
            compiled: Default::default(),
        })
    }
}

impl Catalog {
    /// What subscriptions are checked and compiled against, with `params` the
    /// table a caller took from [`Catalog::params`].
    pub fn definitions<'a>(
        &'a self,
        params: &'a ParamTable,
    ) -> crate::subscription::Definitions<'a> {
        crate::subscription::Definitions {
            params,
            topics: &self.topics,
        }
    }
}

impl Default for Catalog {
    fn default() -> Self {
        // The server's own topics are data of this build, checked by a unit test.
        Catalog::new(None).expect("the server's subscription topics are valid")
    }
}

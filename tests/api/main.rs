//! End-to-end tests: real HTTP against the real server on a real PostgreSQL.

mod acknowledgements;
mod agreement;
mod appointments;
mod auth;
mod bundles;
mod careplans;
mod circles;
mod conditional;
mod errors;
mod export;
mod fidelity;
mod fixtures;
mod formats;
mod fuzz;
mod history;
mod mail;
mod patch;
mod process;
mod receiver;
mod referrals;
mod rest;
mod robustness;
mod search;
mod stays;
mod subscriptions;
mod support;

//! Integration tests: real FerretDB, real RabbitMQ, real processes.
//! Start the services with `scripts/services.sh` (the test script does).

mod accounts;
mod admin;
mod auth_rules;
mod cluster;
mod database;
mod drop_in;
mod events;
mod faults;
mod finance;
mod fuzz;
mod idempotency;
mod ingress_nginx;
mod key_rotation;
mod lambda_rie;
mod lambda_watch;
mod limits;
mod login;
mod metrics;
mod openapi;
mod outage;
mod processes;
mod relay;
mod routes;
mod secrets;
mod signup;
mod throttle;
mod traces;
mod validators;
mod web_client;

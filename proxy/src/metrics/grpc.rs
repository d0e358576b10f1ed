//! `teeproxy_grpc_status_total{route,leg,cluster,code}`: gRPC calls by the status each leg
//! answered (the 17 codes by name, `OTHER` for anything else: bounded).

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::labels::Leg;
use crate::http::grpc::code_name;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct GrpcStatusLabels {
    pub(crate) route: String,
    pub(crate) leg: Leg,
    pub(crate) cluster: String,
    pub(crate) code: &'static str,
}

pub(crate) type GrpcStatusFamily = Family<GrpcStatusLabels, Counter>;

/// Counts one leg's gRPC statuses for one route and cluster.
#[derive(Clone)]
pub(crate) struct GrpcStatusCounter {
    family: GrpcStatusFamily,
    route: Arc<str>,
    leg: Leg,
    cluster: Arc<str>,
}

impl GrpcStatusCounter {
    pub(crate) fn new(family: &GrpcStatusFamily, route: &str, leg: Leg, cluster: &str) -> Self {
        GrpcStatusCounter {
            family: family.clone(),
            route: route.into(),
            leg,
            cluster: cluster.into(),
        }
    }

    pub(crate) fn count(&self, code: u8) {
        self.family
            .get_or_create_owned(&GrpcStatusLabels {
                route: self.route.to_string(),
                leg: self.leg,
                cluster: self.cluster.to_string(),
                code: code_name(code),
            })
            .inc();
    }
}

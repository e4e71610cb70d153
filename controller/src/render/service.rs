//! The headless Service that gives each runner pod a stable DNS name.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sluice_crds::StreamPipeline;

use super::{HTTP_PORT, Names, owned_meta, selector_labels};

pub(super) fn render(pipeline: &StreamPipeline) -> Service {
    Service {
        metadata: owned_meta(pipeline, Names::service(pipeline)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            // Not-ready runners still answer /status, which tells why.
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(pipeline)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: HTTP_PORT,
                target_port: Some(IntOrString::String("http".into())),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

//! Azure Event Hubs, read through its Kafka-protocol endpoint. Not a source of
//! its own: the `eventHub` spec is mapped onto the Kafka source's settings,
//! its connection by [`KafkaConnection::from_event_hub_spec`].

use sluice_crds::EventHubSource as EventHubSpec;

use super::{
    SourceContext, SourceError,
    kafka::{KafkaSource, KafkaTopics},
};
use crate::{kafka::KafkaConnection, secrets::Secrets};

/// The Kafka source that reads an event hub.
pub fn event_hub_source(
    spec: &EventHubSpec,
    context: &SourceContext,
) -> Result<KafkaSource, SourceError> {
    KafkaSource::connect(
        &KafkaConnection::from_event_hub_spec(spec, &Secrets::from_env())?,
        topics(spec),
        context,
    )
}

fn topics(spec: &EventHubSpec) -> KafkaTopics {
    KafkaTopics {
        topics: vec![spec.event_hub.clone()],
        consumer_group: spec.consumer_group.clone(),
        starting_offsets: spec.starting_offsets,
        limits: spec.limits.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_hub_is_read_as_its_one_topic_with_its_consumer_group() {
        let spec = EventHubSpec {
            namespace: "shop".into(),
            event_hub: "clicks".into(),
            consumer_group: "$Default".into(),
            ..EventHubSpec::default()
        };
        let topics = topics(&spec);
        assert_eq!(topics.topics, vec!["clicks".to_string()]);
        assert_eq!(topics.consumer_group, "$Default");
    }
}

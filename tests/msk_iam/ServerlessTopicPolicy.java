// MSK Serverless's topic rules as a CreateTopicPolicy for the tests' Apache Kafka (AWS's
// "Configuration properties for MSK Serverless clusters"): only these topic settings may
// be given, and max.message.bytes at most 8 MiB. A CreateTopics that breaks them is
// refused with POLICY_VIOLATION, as Serverless refuses it. Internal topics are not
// judged (the consumer offsets topic has settings of its own).
import java.util.Map;
import java.util.Set;
import org.apache.kafka.common.errors.PolicyViolationException;
import org.apache.kafka.server.policy.CreateTopicPolicy;

public class ServerlessTopicPolicy implements CreateTopicPolicy {
    private static final Set<String> EDITABLE = Set.of(
        "cleanup.policy", "compression.type", "max.message.bytes", "message.timestamp.difference.max.ms",
        "message.timestamp.type", "retention.bytes", "retention.ms");
    private static final long MAX_MESSAGE_BYTES = 8_388_608L;

    @Override
    public void validate(RequestMetadata request) throws PolicyViolationException {
        // The broker's own topics (__consumer_offsets, ...) are the cluster's business.
        if (request.topic().startsWith("__")) {
            return;
        }
        for (Map.Entry<String, String> config : request.configs().entrySet()) {
            if (!EDITABLE.contains(config.getKey())) {
                throw new PolicyViolationException("topic setting " + config.getKey() + " is not configurable");
            }
        }
        String max = request.configs().get("max.message.bytes");
        if (max != null && Long.parseLong(max) > MAX_MESSAGE_BYTES) {
            throw new PolicyViolationException("max.message.bytes " + max + " is above " + MAX_MESSAGE_BYTES);
        }
    }

    @Override
    public void configure(Map<String, ?> configs) {}

    @Override
    public void close() {}
}

package keel;

import java.time.Duration;
import java.util.*;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.*;
import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.clients.producer.*;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.*;
import org.apache.kafka.streams.*;
import org.apache.kafka.streams.kstream.*;

/**
 * Kafka Streams with processing.guarantee=exactly_once_v2 against a running Keel: a word
 * count (groupBy through a repartition topic, a state store with its compacted changelog
 * topic) over a known input. Checks the final count of every word as a read_committed
 * reader sees the output, that the internal topics exist (compacted changelog), and that
 * each word's last count equals its occurrences.
 */
public class WordCount {
    static final String BOOTSTRAP = System.getenv().getOrDefault("BOOTSTRAP", "127.0.0.1:9092");
    static final String RUN = UUID.randomUUID().toString().substring(0, 8);

    static void fail(String why) {
        System.out.println("FAIL: " + why);
        System.out.println("0 passed, 1 failed");
        System.exit(1);
    }

    public static void main(String[] args) throws Exception {
        String in = "wc-in-" + RUN, out = "wc-out-" + RUN, app = "wc-" + RUN;
        Properties ap = new Properties();
        ap.put("bootstrap.servers", BOOTSTRAP);
        try (Admin admin = Admin.create(ap)) {
            admin.createTopics(List.of(new NewTopic(in, 3, (short) 1), new NewTopic(out, 3, (short) 1))).all().get();
        }
        String[] words = {"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"};
        Map<String, Long> expected = new TreeMap<>();
        Properties pp = new Properties();
        pp.put("bootstrap.servers", BOOTSTRAP);
        pp.put("key.serializer", StringSerializer.class.getName());
        pp.put("value.serializer", StringSerializer.class.getName());
        Random rnd = new Random(7);
        try (KafkaProducer<String, String> p = new KafkaProducer<>(pp)) {
            for (int i = 0; i < 2000; i++) {
                StringBuilder line = new StringBuilder();
                for (int j = 0; j < 5; j++) {
                    String w = words[rnd.nextInt(words.length)];
                    expected.merge(w, 1L, Long::sum);
                    line.append(w).append(' ');
                }
                p.send(new ProducerRecord<>(in, "line" + i, line.toString().trim()));
            }
        }
        Properties sp = new Properties();
        sp.put(StreamsConfig.APPLICATION_ID_CONFIG, app);
        sp.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, BOOTSTRAP);
        sp.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
        sp.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, 1);
        sp.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 200);
        sp.put(StreamsConfig.STATE_DIR_CONFIG, System.getProperty("java.io.tmpdir") + "/keel-streams-" + RUN);
        sp.put(StreamsConfig.DEFAULT_KEY_SERDE_CLASS_CONFIG, Serdes.StringSerde.class);
        sp.put(StreamsConfig.DEFAULT_VALUE_SERDE_CLASS_CONFIG, Serdes.StringSerde.class);
        sp.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
        StreamsBuilder b = new StreamsBuilder();
        b.<String, String>stream(in)
            .flatMapValues(v -> Arrays.asList(v.split(" ")))
            .groupBy((k, w) -> w)
            .count(Materialized.as("counts"))
            .toStream()
            .to(out, Produced.with(Serdes.String(), Serdes.Long()));
        KafkaStreams streams = new KafkaStreams(b.build(), sp);
        streams.start();
        Properties cp = new Properties();
        cp.put("bootstrap.servers", BOOTSTRAP);
        cp.put("group.id", "wc-reader-" + RUN);
        cp.put("isolation.level", "read_committed");
        cp.put("auto.offset.reset", "earliest");
        cp.put("key.deserializer", StringDeserializer.class.getName());
        cp.put("value.deserializer", LongDeserializer.class.getName());
        Map<String, Long> last = new TreeMap<>();
        try (KafkaConsumer<String, Long> c = new KafkaConsumer<>(cp)) {
            c.subscribe(List.of(out));
            long deadline = System.currentTimeMillis() + 180_000;
            while (!last.equals(expected) && System.currentTimeMillis() < deadline) {
                for (ConsumerRecord<String, Long> r : c.poll(Duration.ofMillis(500))) last.put(r.key(), r.value());
            }
        }
        streams.close(Duration.ofSeconds(30));
        if (!last.equals(expected)) fail("counts " + last + ", expected " + expected);
        System.out.println("ok: exactly_once_v2 word count over 10,000 words: every count as expected " + expected);
        try (Admin admin = Admin.create(ap)) {
            Set<String> names = admin.listTopics(new ListTopicsOptions().listInternal(true)).names().get();
            String changelog = app + "-counts-changelog", repartition = app + "-counts-repartition";
            if (!names.contains(changelog) || !names.contains(repartition))
                fail("internal topics missing: " + names);
            var cfg = admin.describeConfigs(List.of(new org.apache.kafka.common.config.ConfigResource(
                org.apache.kafka.common.config.ConfigResource.Type.TOPIC, changelog))).all().get();
            String policy = cfg.values().iterator().next().get("cleanup.policy").value();
            if (!policy.contains("compact")) fail("changelog cleanup.policy is " + policy);
        }
        System.out.println("ok: the changelog topic is compacted and the repartition topic exists");
        System.out.println("2 passed, 0 failed");
    }
}

package keel;

import java.time.Duration;
import java.util.*;
import org.apache.kafka.clients.admin.*;
import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.clients.producer.*;
import org.apache.kafka.common.serialization.*;
import org.apache.kafka.streams.*;
import org.apache.kafka.streams.kstream.*;

/**
 * Kafka Streams with processing.guarantee=at_least_once against a running Keel: a
 * stream-stream join of orders and payments within a 10-second window (two windowed state
 * stores, their changelog topics deleted by time) and a count of orders per
 * one-minute tumbling window (its changelog compacted and deleted by time). Event times are set by the producer, so the expected output
 * is known: each order paid within 10 s of it is joined, payments two minutes late are
 * not, and every window holds 60 orders. At least once: the outputs are compared as sets
 * and last values.
 */
public class WindowedJoin {
    static final String BOOTSTRAP = System.getenv().getOrDefault("BOOTSTRAP", "127.0.0.1:9092");
    static final String RUN = UUID.randomUUID().toString().substring(0, 8);
    static final long T0 = 1_700_000_000_000L - (1_700_000_000_000L % 60_000);
    static final int ORDERS = 300;

    static void fail(String why) {
        System.out.println("FAIL: " + why);
        System.out.println("0 passed, 1 failed");
        System.exit(1);
    }

    public static void main(String[] args) throws Exception {
        String orders = "orders-" + RUN, payments = "payments-" + RUN, joined = "joined-" + RUN,
            perMinute = "per-minute-" + RUN, app = "join-" + RUN;
        Properties ap = new Properties();
        ap.put("bootstrap.servers", BOOTSTRAP);
        try (Admin admin = Admin.create(ap)) {
            admin.createTopics(List.of(new NewTopic(orders, 2, (short) 1), new NewTopic(payments, 2, (short) 1),
                new NewTopic(joined, 2, (short) 1), new NewTopic(perMinute, 1, (short) 1))).all().get();
        }
        Set<String> expectedJoins = new TreeSet<>();
        Properties pp = new Properties();
        pp.put("bootstrap.servers", BOOTSTRAP);
        pp.put("key.serializer", StringSerializer.class.getName());
        pp.put("value.serializer", StringSerializer.class.getName());
        pp.put("acks", "all");
        try (KafkaProducer<String, String> p = new KafkaProducer<>(pp)) {
            for (int i = 0; i < ORDERS; i++) {
                long t = T0 + i * 1000L;
                p.send(new ProducerRecord<>(orders, null, t, "o" + i, "order" + i));
                if (i % 2 == 0) {
                    boolean late = i % 10 == 0;
                    p.send(new ProducerRecord<>(payments, null, t + (late ? 120_000 : 2_000), "o" + i, "pay" + i));
                    if (!late) expectedJoins.add("o" + i + "=order" + i + "+pay" + i);
                }
            }
        }
        Properties sp = new Properties();
        sp.put(StreamsConfig.APPLICATION_ID_CONFIG, app);
        sp.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, BOOTSTRAP);
        sp.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.AT_LEAST_ONCE);
        sp.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, 1);
        sp.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 200);
        sp.put(StreamsConfig.STATE_DIR_CONFIG, System.getProperty("java.io.tmpdir") + "/keel-streams-" + RUN);
        sp.put(StreamsConfig.DEFAULT_KEY_SERDE_CLASS_CONFIG, Serdes.StringSerde.class);
        sp.put(StreamsConfig.DEFAULT_VALUE_SERDE_CLASS_CONFIG, Serdes.StringSerde.class);
        sp.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
        StreamsBuilder b = new StreamsBuilder();
        KStream<String, String> os = b.stream(orders);
        KStream<String, String> ps = b.stream(payments);
        os.join(ps, (o, p) -> o + "+" + p, JoinWindows.ofTimeDifferenceAndGrace(Duration.ofSeconds(10), Duration.ofMinutes(10)),
                StreamJoined.as("paid"))
            .to(joined);
        os.groupBy((k, v) -> "all")
            .windowedBy(TimeWindows.ofSizeAndGrace(Duration.ofMinutes(1), Duration.ofMinutes(10)))
            .count(Materialized.as("per-minute"))
            .toStream((w, n) -> Long.toString(w.window().start()))
            .to(perMinute, Produced.with(Serdes.String(), Serdes.Long()));
        KafkaStreams streams = new KafkaStreams(b.build(), sp);
        streams.start();

        Map<String, Long> expectedMinutes = new TreeMap<>();
        for (int i = 0; i < ORDERS; i++) expectedMinutes.merge(Long.toString(T0 + (i / 60) * 60_000L), 1L, Long::sum);
        Set<String> gotJoins = new TreeSet<>();
        Map<String, Long> gotMinutes = new TreeMap<>();
        Properties cp = new Properties();
        cp.put("bootstrap.servers", BOOTSTRAP);
        cp.put("group.id", "join-reader-" + RUN);
        cp.put("auto.offset.reset", "earliest");
        cp.put("key.deserializer", StringDeserializer.class.getName());
        cp.put("value.deserializer", ByteArrayDeserializer.class.getName());
        try (KafkaConsumer<String, byte[]> c = new KafkaConsumer<>(cp)) {
            c.subscribe(List.of(joined, perMinute));
            long deadline = System.currentTimeMillis() + 180_000;
            while (!(gotJoins.equals(expectedJoins) && gotMinutes.equals(expectedMinutes))
                    && System.currentTimeMillis() < deadline) {
                for (ConsumerRecord<String, byte[]> r : c.poll(Duration.ofMillis(500))) {
                    if (r.topic().equals(joined)) gotJoins.add(r.key() + "=" + new String(r.value()));
                    else gotMinutes.put(r.key(), new LongDeserializer().deserialize(r.topic(), r.value()));
                }
            }
        }
        streams.close(Duration.ofSeconds(30));
        if (!gotJoins.equals(expectedJoins))
            fail("joined " + gotJoins.size() + " pairs, expected " + expectedJoins.size() + ": extra "
                + diff(gotJoins, expectedJoins) + ", missing " + diff(expectedJoins, gotJoins));
        System.out.println("ok: at_least_once windowed join: the " + expectedJoins.size()
            + " payments within 10 s of their order joined, the late ones not");
        if (!gotMinutes.equals(expectedMinutes)) fail("per-minute counts " + gotMinutes + ", expected " + expectedMinutes);
        System.out.println("ok: one-minute tumbling windows hold " + expectedMinutes.values() + " orders");
        try (Admin admin = Admin.create(ap)) {
            Set<String> names = admin.listTopics(new ListTopicsOptions().listInternal(true)).names().get();
            List<String> changelogs = names.stream().filter(n -> n.startsWith(app) && n.endsWith("-changelog")).toList();
            if (changelogs.size() < 3) fail("windowed changelog topics missing: " + names);
            for (String t : changelogs) {
                var cfg = admin.describeConfigs(List.of(new org.apache.kafka.common.config.ConfigResource(
                    org.apache.kafka.common.config.ConfigResource.Type.TOPIC, t))).all().get();
                String policy = cfg.values().iterator().next().get("cleanup.policy").value();
                // Streams asks for compact,delete for a windowed aggregate's changelog, and
                // delete alone for a join store's (it keeps duplicate keys).
                String want = t.contains("-join-store-") ? "delete" : "compact,delete";
                if (!Set.of(policy.split(",")).equals(Set.of(want.split(","))))
                    fail(t + " has cleanup.policy=" + policy + ", not " + want);
            }
            System.out.println("ok: the " + changelogs.size()
                + " windowed changelog topics have the cleanup.policy Streams asked for (compact,delete; delete for join stores)");
        }
        System.out.println("3 passed, 0 failed");
    }

    static Set<String> diff(Set<String> a, Set<String> b) {
        Set<String> d = new TreeSet<>(a);
        d.removeAll(b);
        return d;
    }
}

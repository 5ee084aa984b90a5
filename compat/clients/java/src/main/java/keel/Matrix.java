package keel;

import java.time.Duration;
import java.util.*;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.*;
import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.clients.producer.*;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.config.ConfigResource;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.header.internals.RecordHeader;
import org.apache.kafka.common.serialization.*;

/**
 * The client matrix's scenarios (compat/clients/SCENARIOS.md) with Apache Kafka's Java
 * client. Prints one "RESULT scenario PASS|FAIL detail" line per scenario.
 */
public class Matrix {
    static final String BOOT = System.getenv().getOrDefault("BOOTSTRAP", "127.0.0.1:9092");
    static final String PREFIX = System.getenv().getOrDefault("PREFIX", "java");
    static final long BASE_TS = 1_700_000_000_000L;
    static Admin admin;

    interface Scenario {
        String run() throws Exception;
    }

    static void scenario(String name, Scenario s) {
        try {
            String out = s.run();
            System.out.println("RESULT " + name + " " + (out == null ? "PASS" : out));
        } catch (Throwable e) {
            e.printStackTrace(System.out);
            String msg = String.valueOf(e).replace('\n', ' ');
            System.out.println("RESULT " + name + " FAIL " + msg.substring(0, Math.min(300, msg.length())));
        }
        System.out.flush();
    }

    static void check(boolean cond, String what) {
        if (!cond) throw new AssertionError(what);
    }

    static Properties props() {
        Properties p = new Properties();
        p.put("bootstrap.servers", BOOT);
        return p;
    }

    static KafkaProducer<String, String> producer(String codec) {
        Properties p = props();
        p.put("key.serializer", StringSerializer.class.getName());
        p.put("value.serializer", StringSerializer.class.getName());
        p.put("acks", "all");
        p.put("enable.idempotence", "true");
        p.put("linger.ms", "5");
        p.put("compression.type", codec);
        return new KafkaProducer<>(p);
    }

    static KafkaConsumer<String, String> consumer(String group) {
        Properties p = props();
        p.put("group.id", group);
        p.put("key.deserializer", StringDeserializer.class.getName());
        p.put("value.deserializer", StringDeserializer.class.getName());
        p.put("enable.auto.commit", "false");
        p.put("auto.offset.reset", "earliest");
        p.put("session.timeout.ms", "10000");
        return new KafkaConsumer<>(p);
    }

    static void create(String topic, int partitions) throws Exception {
        admin.createTopics(List.of(new NewTopic(topic, partitions, (short) 1))).all().get(30, TimeUnit.SECONDS);
        long deadline = System.currentTimeMillis() + 30_000;
        while (System.currentTimeMillis() < deadline) {
            try {
                TopicDescription d = admin.describeTopics(List.of(topic)).allTopicNames().get(10, TimeUnit.SECONDS).get(topic);
                if (d.partitions().size() == partitions && d.partitions().stream().allMatch(p -> p.leader() != null))
                    return;
            } catch (Exception e) {
                // not yet known everywhere
            }
            Thread.sleep(200);
        }
        throw new AssertionError(topic + " never had leaders");
    }

    static void send(KafkaProducer<String, String> p, List<ProducerRecord<String, String>> records) throws Exception {
        List<java.util.concurrent.Future<RecordMetadata>> fs = new ArrayList<>();
        for (ProducerRecord<String, String> r : records) fs.add(p.send(r));
        p.flush();
        for (var f : fs) f.get(30, TimeUnit.SECONDS);
    }

    static List<ConsumerRecord<String, String>> read(String topic, Map<Integer, Long> from, int count) {
        List<ConsumerRecord<String, String>> out = new ArrayList<>();
        try (KafkaConsumer<String, String> c = consumer(PREFIX + "-reader")) {
            List<TopicPartition> tps = new ArrayList<>();
            for (int p : from.keySet()) tps.add(new TopicPartition(topic, p));
            c.assign(tps);
            for (var e : from.entrySet()) c.seek(new TopicPartition(topic, e.getKey()), e.getValue());
            long deadline = System.currentTimeMillis() + 30_000;
            while (out.size() < count && System.currentTimeMillis() < deadline) {
                for (ConsumerRecord<String, String> r : c.poll(Duration.ofMillis(300))) out.add(r);
            }
        }
        return out;
    }

    static String admin() throws Exception {
        String topic = PREFIX + "-admin";
        create(topic, 3);
        TopicDescription d = admin.describeTopics(List.of(topic)).allTopicNames().get(10, TimeUnit.SECONDS).get(topic);
        check(d.partitions().size() == 3, d.partitions().size() + " partitions");
        ConfigResource res = new ConfigResource(ConfigResource.Type.TOPIC, topic);
        admin.incrementalAlterConfigs(Map.of(res, List.of(new AlterConfigOp(new ConfigEntry("retention.ms", "3600000"), AlterConfigOp.OpType.SET))))
                .all().get(30, TimeUnit.SECONDS);
        // A changed config reaches every broker soon after it is committed, not at once.
        String value = null;
        long until = System.currentTimeMillis() + 15_000;
        while (System.currentTimeMillis() < until) {
            value = admin.describeConfigs(List.of(res)).all().get(30, TimeUnit.SECONDS).get(res).get("retention.ms").value();
            if ("3600000".equals(value)) break;
            Thread.sleep(200);
        }
        check("3600000".equals(value), "retention.ms = " + value);
        check(admin.listTopics().names().get(10, TimeUnit.SECONDS).contains(topic), "not listed");
        admin.deleteTopics(List.of(topic)).all().get(30, TimeUnit.SECONDS);
        long deadline = System.currentTimeMillis() + 30_000;
        while (admin.listTopics().names().get(10, TimeUnit.SECONDS).contains(topic)) {
            check(System.currentTimeMillis() < deadline, "still listed after delete");
            Thread.sleep(200);
        }
        return null;
    }

    static String produce() throws Exception {
        String topic = PREFIX + "-produce";
        create(topic, 3);
        List<ProducerRecord<String, String>> recs = new ArrayList<>();
        for (int i = 0; i < 30; i++) {
            List<Header> hs = List.of(new RecordHeader("h1", ("a" + i).getBytes()), new RecordHeader("h2", "b".getBytes()));
            recs.add(new ProducerRecord<>(topic, null, BASE_TS + i, "key-" + (i % 5), "value-" + i, hs));
        }
        try (var p = producer("none")) {
            send(p, recs);
        }
        var got = read(topic, Map.of(0, 0L, 1, 0L, 2, 0L), 30);
        check(got.size() == 30, "read " + got.size() + " of 30");
        Map<String, Integer> keyPart = new HashMap<>();
        Map<String, Integer> last = new HashMap<>();
        for (var r : got) {
            int i = Integer.parseInt(r.value().split("-")[1]);
            check(r.key().equals("key-" + (i % 5)), "key of " + i);
            Header[] hs = r.headers().toArray();
            check(hs.length == 2 && hs[0].key().equals("h1") && new String(hs[0].value()).equals("a" + i)
                    && hs[1].key().equals("h2") && new String(hs[1].value()).equals("b"), "headers of " + i);
            check(r.timestamp() == BASE_TS + i, "timestamp of " + i + ": " + r.timestamp());
            check(keyPart.computeIfAbsent(r.key(), k -> r.partition()) == r.partition(), "key in two partitions");
            check(last.getOrDefault(r.key(), -1) < i, "key out of order");
            last.put(r.key(), i);
        }
        return null;
    }

    static String compression() throws Exception {
        for (String codec : List.of("none", "gzip", "snappy", "lz4", "zstd")) {
            String topic = PREFIX + "-codec-" + codec;
            create(topic, 1);
            List<String> values = new ArrayList<>();
            List<ProducerRecord<String, String>> recs = new ArrayList<>();
            for (int i = 0; i < 10; i++) {
                String v = (codec + "-" + i + "-").repeat(20);
                values.add(v);
                recs.add(new ProducerRecord<>(topic, 0, null, v));
            }
            try (var p = producer(codec)) {
                send(p, recs);
            }
            var got = read(topic, Map.of(0, 0L), 10);
            List<String> gotValues = new ArrayList<>();
            for (var r : got) gotValues.add(r.value());
            check(gotValues.equals(values), codec + ": read back " + got.size() + " records, not the 10 sent");
        }
        return null;
    }

    static String offsets() throws Exception {
        String topic = PREFIX + "-offsets";
        create(topic, 1);
        List<ProducerRecord<String, String>> recs = new ArrayList<>();
        for (int i = 0; i < 20; i++) recs.add(new ProducerRecord<>(topic, 0, BASE_TS + 1000L * i, null, "r" + i));
        try (var p = producer("none")) {
            send(p, recs);
        }
        TopicPartition tp = new TopicPartition(topic, 0);
        long earliest = admin.listOffsets(Map.of(tp, OffsetSpec.earliest())).all().get(10, TimeUnit.SECONDS).get(tp).offset();
        long latest = admin.listOffsets(Map.of(tp, OffsetSpec.latest())).all().get(10, TimeUnit.SECONDS).get(tp).offset();
        check(earliest == 0 && latest == 20, "earliest/latest " + earliest + "/" + latest);
        try (var c = consumer(PREFIX + "-offsets")) {
            var found = c.offsetsForTimes(Map.of(tp, BASE_TS + 7000)).get(tp);
            check(found != null && found.offset() == 7, "offset for timestamp = " + found);
        }
        var got = read(topic, Map.of(0, 12L), 8);
        List<Long> offs = new ArrayList<>();
        for (var r : got) offs.add(r.offset());
        check(offs.equals(List.of(12L, 13L, 14L, 15L, 16L, 17L, 18L, 19L)), "from 12: " + offs);
        return null;
    }

    static Set<String> values(ConsumerRecords<String, String> rs) {
        Set<String> out = new HashSet<>();
        for (var r : rs) out.add(r.value());
        return out;
    }

    static List<ProducerRecord<String, String>> batch(String topic, String tag, int n) {
        List<ProducerRecord<String, String>> recs = new ArrayList<>();
        for (int i = 0; i < n; i++) recs.add(new ProducerRecord<>(topic, i % 4, null, tag + i));
        return recs;
    }

    static Set<String> names(String tag, int n) {
        Set<String> out = new HashSet<>();
        for (int i = 0; i < n; i++) out.add(tag + i);
        return out;
    }

    static String group() throws Exception {
        String topic = PREFIX + "-group";
        String gid = PREFIX + "-group";
        create(topic, 4);
        try (var p = producer("none")) {
            var a = consumer(gid);
            var b = consumer(gid);
            a.subscribe(List.of(topic));
            b.subscribe(List.of(topic));
            long deadline = System.currentTimeMillis() + 60_000;
            while ((a.assignment().isEmpty() || b.assignment().isEmpty()
                    || a.assignment().size() + b.assignment().size() != 4) && System.currentTimeMillis() < deadline) {
                check(a.poll(Duration.ofMillis(200)).isEmpty() && b.poll(Duration.ofMillis(200)).isEmpty(), "a record before any was produced");
            }
            check(!a.assignment().isEmpty() && !b.assignment().isEmpty(), "assignments " + a.assignment() + " / " + b.assignment());
            send(p, batch(topic, "g", 40));
            Set<String> seen = new HashSet<>();
            while (seen.size() < 40 && System.currentTimeMillis() < deadline) {
                seen.addAll(values(a.poll(Duration.ofMillis(200))));
                seen.addAll(values(b.poll(Duration.ofMillis(200))));
            }
            check(seen.equals(names("g", 40)), "two members read " + seen.size() + " of 40");
            a.commitSync();
            b.commitSync();
            a.close();
            while (b.assignment().size() < 4 && System.currentTimeMillis() < deadline) {
                check(b.poll(Duration.ofMillis(200)).isEmpty(), "the remaining member re-read a committed record");
            }
            check(b.assignment().size() == 4, "remaining member has " + b.assignment().size() + " partitions");
            send(p, batch(topic, "h", 20));
            List<String> more = new ArrayList<>();
            while (more.size() < 20 && System.currentTimeMillis() < deadline) {
                for (var r : b.poll(Duration.ofMillis(200))) more.add(r.value());
            }
            check(more.size() == 20 && new HashSet<>(more).equals(names("h", 20)), "after rebalance read " + more);
            b.commitSync();
            b.close();
            send(p, batch(topic, "j", 10));
            try (var c = consumer(gid)) {
                c.subscribe(List.of(topic));
                List<String> last = new ArrayList<>();
                while (last.size() < 10 && System.currentTimeMillis() < deadline) {
                    for (var r : c.poll(Duration.ofMillis(200))) last.add(r.value());
                }
                for (var r : c.poll(Duration.ofSeconds(2))) last.add(r.value());
                check(last.size() == 10 && new HashSet<>(last).equals(names("j", 10)), "resumed member read " + last);
                c.commitSync();
            }
        }
        return null;
    }

    @SuppressWarnings("deprecation")
    static String groupsAdmin() throws Exception {
        String gid = PREFIX + "-group";
        var listed = admin.listConsumerGroups().all().get(30, TimeUnit.SECONDS);
        check(listed.stream().anyMatch(g -> g.groupId().equals(gid)), "group not listed");
        var d = admin.describeConsumerGroups(List.of(gid)).all().get(30, TimeUnit.SECONDS).get(gid);
        check(String.valueOf(d.state()).equalsIgnoreCase("EMPTY"), "state " + d.state());
        var offs = admin.listConsumerGroupOffsets(gid).partitionsToOffsetAndMetadata().get(30, TimeUnit.SECONDS);
        long sum = offs.values().stream().mapToLong(OffsetAndMetadata::offset).sum();
        check(offs.size() == 4 && sum == 70, "committed " + offs);
        return null;
    }

    public static void main(String[] args) throws Exception {
        admin = Admin.create(props());
        scenario("admin", Matrix::admin);
        scenario("produce", Matrix::produce);
        scenario("compression", Matrix::compression);
        scenario("offsets", Matrix::offsets);
        scenario("group", Matrix::group);
        scenario("groups_admin", Matrix::groupsAdmin);
        admin.close(Duration.ofSeconds(5));
    }
}

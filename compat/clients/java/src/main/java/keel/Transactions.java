package keel;

import java.time.Duration;
import java.util.*;
import org.apache.kafka.clients.admin.*;
import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.clients.producer.*;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.ProducerFencedException;
import org.apache.kafka.common.serialization.*;

/**
 * Kafka transactions with Apache Kafka's Java client against a running Keel:
 * consume-transform-produce with sendOffsetsToTransaction (every third transaction
 * aborted and redone), a read_committed reader that must see every input exactly once
 * and nothing aborted, and a zombie producer fenced by a second one with the same
 * transactional.id. Prints "N passed, M failed" and exits non-zero on failure.
 */
public class Transactions {
    static final String BOOTSTRAP = System.getenv().getOrDefault("BOOTSTRAP", "127.0.0.1:9092");
    static final int N = Integer.parseInt(System.getenv().getOrDefault("N", "300"));
    static final String RUN = UUID.randomUUID().toString().substring(0, 8);
    static int passed = 0;

    static void fail(String why) {
        System.out.println("FAIL: " + why);
        System.out.println(passed + " passed, 1 failed");
        System.exit(1);
    }

    static void ok(String what) {
        passed++;
        System.out.println("ok: " + what);
    }

    static Properties props() {
        Properties p = new Properties();
        p.put("bootstrap.servers", BOOTSTRAP);
        return p;
    }

    static KafkaProducer<String, String> producer(String txnId) {
        Properties p = props();
        p.put("key.serializer", StringSerializer.class.getName());
        p.put("value.serializer", StringSerializer.class.getName());
        p.put("acks", "all");
        if (txnId != null) p.put("transactional.id", txnId);
        return new KafkaProducer<>(p);
    }

    static KafkaConsumer<String, String> consumer(String group, String isolation) {
        Properties p = props();
        p.put("group.id", group);
        p.put("key.deserializer", StringDeserializer.class.getName());
        p.put("value.deserializer", StringDeserializer.class.getName());
        p.put("enable.auto.commit", "false");
        p.put("auto.offset.reset", "earliest");
        p.put("isolation.level", isolation);
        p.put("max.poll.records", "40");
        return new KafkaConsumer<>(p);
    }

    static List<ConsumerRecord<String, String>> readAll(String topic, String isolation, int atLeast) {
        try (KafkaConsumer<String, String> c = consumer("reader-" + UUID.randomUUID(), isolation)) {
            List<TopicPartition> tps = new ArrayList<>();
            for (int i = 0; i < 3; i++) tps.add(new TopicPartition(topic, i));
            c.assign(tps);
            c.seekToBeginning(tps);
            List<ConsumerRecord<String, String>> out = new ArrayList<>();
            long deadline = System.currentTimeMillis() + 60_000, quiet = System.currentTimeMillis();
            while (System.currentTimeMillis() < deadline) {
                ConsumerRecords<String, String> rs = c.poll(Duration.ofMillis(200));
                if (rs.isEmpty()) {
                    if (out.size() >= atLeast && System.currentTimeMillis() - quiet > 3000) break;
                    continue;
                }
                rs.forEach(out::add);
                quiet = System.currentTimeMillis();
            }
            return out;
        }
    }

    public static void main(String[] args) throws Exception {
        String in = "jtxn-in-" + RUN, out = "jtxn-out-" + RUN;
        try (Admin admin = Admin.create(props())) {
            admin.createTopics(List.of(new NewTopic(in, 3, (short) 1), new NewTopic(out, 3, (short) 1))).all().get();
        }
        try (KafkaProducer<String, String> p = producer(null)) {
            for (int i = 0; i < N; i++) p.send(new ProducerRecord<>(in, i % 3, "k" + i, "v" + i));
            p.flush();
        }
        String group = "jctp-" + RUN;
        int txns = 0, abortedRecords = 0;
        Set<String> done = new HashSet<>();
        try (KafkaConsumer<String, String> c = consumer(group, "read_committed");
             KafkaProducer<String, String> tp = producer("jctp-" + RUN)) {
            c.subscribe(List.of(in));
            tp.initTransactions();
            long deadline = System.currentTimeMillis() + 120_000;
            while (done.size() < N && System.currentTimeMillis() < deadline) {
                ConsumerRecords<String, String> rs = c.poll(Duration.ofMillis(500));
                if (rs.isEmpty()) continue;
                tp.beginTransaction();
                Map<TopicPartition, OffsetAndMetadata> offsets = new HashMap<>();
                for (ConsumerRecord<String, String> r : rs) {
                    tp.send(new ProducerRecord<>(out, r.partition(), r.key(), r.value().toUpperCase()));
                    offsets.put(new TopicPartition(r.topic(), r.partition()), new OffsetAndMetadata(r.offset() + 1));
                }
                tp.sendOffsetsToTransaction(offsets, c.groupMetadata());
                txns++;
                if (txns % 3 == 0) {
                    tp.flush();
                    tp.abortTransaction();
                    abortedRecords += rs.count();
                    Map<TopicPartition, OffsetAndMetadata> committed = c.committed(c.assignment());
                    for (TopicPartition tpn : c.assignment()) {
                        OffsetAndMetadata o = committed.get(tpn);
                        c.seek(tpn, o == null ? 0 : o.offset());
                    }
                } else {
                    tp.commitTransaction();
                    rs.forEach(r -> done.add(r.key()));
                }
            }
            if (done.size() != N) fail("processed " + done.size() + " of " + N);
            Map<TopicPartition, OffsetAndMetadata> committed = c.committed(c.assignment());
            long total = committed.values().stream().mapToLong(OffsetAndMetadata::offset).sum();
            if (total != N) fail("committed offsets sum to " + total + ", not " + N);
        }
        ok(txns + " transactions (" + abortedRecords + " records aborted and redone); offsets committed at the input's end");
        List<ConsumerRecord<String, String>> seen = readAll(out, "read_committed", N);
        Set<String> keys = new HashSet<>();
        for (ConsumerRecord<String, String> r : seen) {
            if (!keys.add(r.key())) fail("read_committed saw " + r.key() + " twice");
            if (!r.value().equals("V" + r.key().substring(1))) fail("wrong value " + r.value());
        }
        if (keys.size() != N) fail("read_committed saw " + keys.size() + " of " + N);
        ok("a read_committed reader saw each of " + N + " outputs exactly once");
        List<ConsumerRecord<String, String>> raw = readAll(out, "read_uncommitted", N + abortedRecords);
        if (raw.size() != N + abortedRecords) fail("read_uncommitted saw " + raw.size() + ", not " + (N + abortedRecords));
        ok("a read_uncommitted reader sees the " + abortedRecords + " aborted records too");

        String tid = "jzombie-" + RUN;
        KafkaProducer<String, String> a = producer(tid);
        a.initTransactions();
        a.beginTransaction();
        for (int i = 0; i < 5; i++) a.send(new ProducerRecord<>(out, 0, "zombie", "z" + i));
        a.flush();
        try (KafkaProducer<String, String> b = producer(tid)) {
            b.initTransactions();
            b.beginTransaction();
            b.send(new ProducerRecord<>(out, 0, "successor", "s"));
            b.commitTransaction();
        }
        try {
            a.commitTransaction();
            fail("the fenced producer committed");
        } catch (ProducerFencedException | org.apache.kafka.common.errors.InvalidProducerEpochException e) {
            // fenced, as it must be
        } finally {
            a.close(Duration.ofSeconds(5));
        }
        boolean zombie = false, successor = false;
        for (ConsumerRecord<String, String> r : readAll(out, "read_committed", N + 1)) {
            zombie |= r.key().equals("zombie");
            successor |= r.key().equals("successor");
        }
        if (zombie || !successor) fail("after fencing: zombie seen " + zombie + ", successor seen " + successor);
        ok("a second producer with the same transactional.id fenced the first and aborted its transaction");
        System.out.println(passed + " passed, 0 failed");
    }
}

package keel;

import java.time.Duration;
import java.util.*;
import java.util.concurrent.*;
import org.apache.kafka.clients.admin.*;
import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.clients.producer.*;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.*;

/**
 * Apache Kafka's Java client through a leader's death: an idempotent acks=all producer
 * sends 1,000 records to an RF=3 partition while a consumer reads them; once the consumer
 * has read 300, the partition's leader is killed with kill -9 (NODE_PIDS maps node ids to
 * process ids). The producer carries on against the new leader; the consumer, seeing a new
 * leader epoch, validates its position with OffsetForLeaderEpoch (KIP-320) and carries on.
 * Checks: every record acknowledged, read exactly once, in order, with no offset reset,
 * and records after the kill carry a later leader epoch.
 */
public class Failover {
    static final String BOOTSTRAP = System.getenv().getOrDefault("BOOTSTRAP", "127.0.0.1:9092");
    static final int N = 1000;

    static void fail(String why) {
        System.out.println("FAIL: " + why);
        System.out.println("0 passed, 1 failed");
        System.exit(1);
    }

    public static void main(String[] args) throws Exception {
        Map<Integer, String> pids = new HashMap<>();
        for (String kv : System.getenv("NODE_PIDS").split(",")) {
            String[] p = kv.split(":");
            pids.put(Integer.parseInt(p[0]), p[1]);
        }
        String topic = "failover-" + UUID.randomUUID().toString().substring(0, 8);
        Properties ap = new Properties();
        ap.put("bootstrap.servers", BOOTSTRAP);
        Admin admin = Admin.create(ap);
        admin.createTopics(List.of(new NewTopic(topic, 1, (short) 3))).all().get(30, TimeUnit.SECONDS);
        int leader = -1;
        long until = System.currentTimeMillis() + 30_000;
        while (leader < 0 && System.currentTimeMillis() < until) {
            try {
                var d = admin.describeTopics(List.of(topic)).allTopicNames().get(10, TimeUnit.SECONDS).get(topic);
                var l = d.partitions().get(0).leader();
                if (l != null && d.partitions().get(0).isr().size() == 3) leader = l.id();
            } catch (ExecutionException e) {
                // not known yet
            }
            if (leader < 0) Thread.sleep(200);
        }
        if (leader < 0) fail("no leader with three in-sync replicas");

        Properties pp = new Properties();
        pp.put("bootstrap.servers", BOOTSTRAP);
        pp.put("key.serializer", StringSerializer.class.getName());
        pp.put("value.serializer", StringSerializer.class.getName());
        pp.put("acks", "all");
        pp.put("enable.idempotence", "true");
        pp.put("linger.ms", "5");
        pp.put("delivery.timeout.ms", "120000");
        Properties cp = new Properties();
        cp.put("bootstrap.servers", BOOTSTRAP);
        cp.put("key.deserializer", StringDeserializer.class.getName());
        cp.put("value.deserializer", StringDeserializer.class.getName());
        cp.put("auto.offset.reset", "none");   // a reset would throw instead of re-reading
        cp.put("enable.auto.commit", "false");
        cp.put("metadata.max.age.ms", "1000");

        List<Future<RecordMetadata>> sent = new ArrayList<>();
        List<String> read = new ArrayList<>();
        long lastOffset = -1;
        int epochBefore = -1, epochAfter = -1;
        boolean killed = false;
        try (KafkaProducer<String, String> p = new KafkaProducer<>(pp);
             KafkaConsumer<String, String> c = new KafkaConsumer<>(cp)) {
            TopicPartition tp = new TopicPartition(topic, 0);
            c.assign(List.of(tp));
            c.seek(tp, 0);
            int next = 0;
            long deadline = System.currentTimeMillis() + 180_000;
            while (read.size() < N && System.currentTimeMillis() < deadline) {
                // Keep at most 100 records in flight ahead of the reader.
                while (next < N && next < read.size() + 100) {
                    sent.add(p.send(new ProducerRecord<>(topic, 0, "k" + next, "r" + next)));
                    next++;
                }
                for (ConsumerRecord<String, String> r : c.poll(Duration.ofMillis(200))) {
                    if (r.offset() <= lastOffset) fail("offset " + r.offset() + " read after " + lastOffset);
                    lastOffset = r.offset();
                    read.add(r.value());
                    int epoch = r.leaderEpoch().orElse(-1);
                    if (!killed) epochBefore = Math.max(epochBefore, epoch);
                    else epochAfter = Math.max(epochAfter, epoch);
                }
                if (!killed && read.size() >= 300) {
                    new ProcessBuilder("kill", "-9", pids.get(leader)).inheritIO().start().waitFor();
                    killed = true;
                    System.out.println("killed the leader, node " + leader + ", after reading " + read.size());
                }
            }
            p.flush();
        }
        for (var f : sent) f.get(60, TimeUnit.SECONDS);
        System.out.println("ok: " + sent.size() + " records acknowledged with acks=all through the leader's death");
        List<String> want = new ArrayList<>();
        for (int i = 0; i < N; i++) want.add("r" + i);
        if (!read.equals(want)) fail("read " + read.size() + " records, not r0..r" + (N - 1) + " once each in order");
        System.out.println("ok: the consumer read every record exactly once, in order, without an offset reset");
        if (!(epochAfter > epochBefore && epochBefore >= 0))
            fail("leader epochs before/after the kill: " + epochBefore + "/" + epochAfter);
        System.out.println("ok: records after the kill carry a later leader epoch (" + epochBefore + " -> " + epochAfter + ")");
        admin.close();
        System.out.println("3 passed, 0 failed");
    }
}

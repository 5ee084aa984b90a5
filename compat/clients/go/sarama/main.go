// The client matrix's scenarios (compat/clients/SCENARIOS.md) with IBM's Sarama, speaking
// the protocol versions of Kafka 4.0 (config.Version).
package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/IBM/sarama"
	m "keel.dev/compat/clients/go/matrix"
)

var addrs = strings.Split(m.Bootstrap, ",")

func config() *sarama.Config {
	c := sarama.NewConfig()
	c.Version = sarama.V4_0_0_0
	c.ClientID = "keel-matrix"
	return c
}

var adm = func() sarama.ClusterAdmin {
	a, err := sarama.NewClusterAdmin(addrs, config())
	m.Must(err, "cluster admin")
	return a
}()

func create(topic string, partitions int32) {
	m.Must(adm.CreateTopic(topic, &sarama.TopicDetail{NumPartitions: partitions, ReplicationFactor: 1}, false), "create "+topic)
	m.Check(m.Until(30*time.Second, func() bool {
		md, err := adm.DescribeTopics([]string{topic})
		if err != nil || len(md) != 1 || md[0].Err != sarama.ErrNoError || len(md[0].Partitions) != int(partitions) {
			return false
		}
		for _, p := range md[0].Partitions {
			if p.Leader < 0 {
				return false
			}
		}
		return true
	}), "%s never had leaders", topic)
}

func producer(codec sarama.CompressionCodec, manual bool) sarama.SyncProducer {
	c := config()
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Producer.Idempotent = true
	c.Net.MaxOpenRequests = 1
	c.Producer.Return.Successes = true
	c.Producer.Compression = codec
	if manual {
		c.Producer.Partitioner = sarama.NewManualPartitioner
	}
	p, err := sarama.NewSyncProducer(addrs, c)
	m.Must(err, "producer")
	return p
}

func read(topic string, from map[int32]int64, count int) []*sarama.ConsumerMessage {
	c, err := sarama.NewConsumer(addrs, config())
	m.Must(err, "consumer")
	defer c.Close()
	out := make(chan *sarama.ConsumerMessage, count+100)
	for p, o := range from {
		pc, err := c.ConsumePartition(topic, p, o)
		m.Must(err, "consume partition")
		defer pc.Close()
		go func() {
			for msg := range pc.Messages() {
				out <- msg
			}
		}()
	}
	var got []*sarama.ConsumerMessage
	timeout := time.After(30 * time.Second)
	for len(got) < count {
		select {
		case msg := <-out:
			got = append(got, msg)
		case <-timeout:
			return got
		}
	}
	return got
}

func admin() error {
	topic := m.Prefix + "-admin"
	create(topic, 3)
	md, err := adm.DescribeTopics([]string{topic})
	m.Must(err, "describe")
	m.Check(len(md[0].Partitions) == 3, "%d partitions", len(md[0].Partitions))
	v := "3600000"
	m.Must(adm.IncrementalAlterConfig(sarama.TopicResource, topic, map[string]sarama.IncrementalAlterConfigsEntry{
		"retention.ms": {Operation: sarama.IncrementalAlterConfigsOperationSet, Value: &v}}, false), "alter config")
	// A changed config reaches every broker soon after it is committed, not at once.
	got := ""
	m.Until(15*time.Second, func() bool {
		entries, err := adm.DescribeConfig(sarama.ConfigResource{Type: sarama.TopicResource, Name: topic})
		m.Must(err, "describe config")
		for _, e := range entries {
			if e.Name == "retention.ms" {
				got = e.Value
			}
		}
		return got == v
	})
	m.Check(got == v, "retention.ms = %q", got)
	all, err := adm.ListTopics()
	m.Must(err, "list topics")
	_, ok := all[topic]
	m.Check(ok, "not listed")
	m.Must(adm.DeleteTopic(topic), "delete")
	m.Check(m.Until(30*time.Second, func() bool {
		all, err := adm.ListTopics()
		_, ok := all[topic]
		return err == nil && !ok
	}), "still listed after delete")
	return nil
}

func produce() error {
	topic := m.Prefix + "-produce"
	create(topic, 3)
	p := producer(sarama.CompressionNone, false)
	defer p.Close()
	var msgs []*sarama.ProducerMessage
	for i := 0; i < 30; i++ {
		msgs = append(msgs, &sarama.ProducerMessage{
			Topic: topic, Key: sarama.StringEncoder(fmt.Sprintf("key-%d", i%5)), Value: sarama.StringEncoder(fmt.Sprintf("value-%d", i)),
			Headers:   []sarama.RecordHeader{{Key: []byte("h1"), Value: []byte(fmt.Sprintf("a%d", i))}, {Key: []byte("h2"), Value: []byte("b")}},
			Timestamp: time.UnixMilli(m.BaseTS + int64(i)),
		})
	}
	m.Must(p.SendMessages(msgs), "send")
	got := read(topic, map[int32]int64{0: 0, 1: 0, 2: 0}, 30)
	m.Check(len(got) == 30, "read %d of 30", len(got))
	keyPart := map[string]int32{}
	last := map[string]int{}
	// Records of different partitions arrive interleaved; order is checked per partition.
	for _, r := range got {
		var i int
		fmt.Sscanf(string(r.Value), "value-%d", &i)
		k := string(r.Key)
		m.Check(k == fmt.Sprintf("key-%d", i%5), "key of %d", i)
		m.Check(len(r.Headers) == 2 && string(r.Headers[0].Key) == "h1" && string(r.Headers[0].Value) == fmt.Sprintf("a%d", i) &&
			string(r.Headers[1].Key) == "h2" && string(r.Headers[1].Value) == "b", "headers of %d", i)
		m.Check(r.Timestamp.UnixMilli() == m.BaseTS+int64(i), "timestamp of %d: %d", i, r.Timestamp.UnixMilli())
		if p, ok := keyPart[k]; ok {
			m.Check(p == r.Partition, "key %s in two partitions", k)
		}
		keyPart[k] = r.Partition
		if l, ok := last[k]; ok {
			m.Check(l < i, "key %s out of order", k)
		}
		last[k] = i
	}
	return nil
}

func compression() error {
	codecs := map[string]sarama.CompressionCodec{
		"none": sarama.CompressionNone, "gzip": sarama.CompressionGZIP, "snappy": sarama.CompressionSnappy,
		"lz4": sarama.CompressionLZ4, "zstd": sarama.CompressionZSTD,
	}
	for _, name := range []string{"none", "gzip", "snappy", "lz4", "zstd"} {
		topic := m.Prefix + "-codec-" + name
		create(topic, 1)
		p := producer(codecs[name], true)
		var msgs []*sarama.ProducerMessage
		var want []string
		for i := 0; i < 10; i++ {
			v := strings.Repeat(fmt.Sprintf("%s-%d-", name, i), 20)
			want = append(want, v)
			msgs = append(msgs, &sarama.ProducerMessage{Topic: topic, Partition: 0, Value: sarama.StringEncoder(v)})
		}
		m.Must(p.SendMessages(msgs), name+": send")
		p.Close()
		got := read(topic, map[int32]int64{0: 0}, 10)
		m.Check(len(got) == 10, "%s: read back %d records", name, len(got))
		for i, r := range got {
			m.Check(string(r.Value) == want[i], "%s: record %d differs", name, i)
		}
	}
	return nil
}

func offsets() error {
	topic := m.Prefix + "-offsets"
	create(topic, 1)
	p := producer(sarama.CompressionNone, true)
	defer p.Close()
	var msgs []*sarama.ProducerMessage
	for i := 0; i < 20; i++ {
		msgs = append(msgs, &sarama.ProducerMessage{Topic: topic, Partition: 0, Value: sarama.StringEncoder(fmt.Sprintf("r%d", i)),
			Timestamp: time.UnixMilli(m.BaseTS + 1000*int64(i))})
	}
	m.Must(p.SendMessages(msgs), "send")
	cl, err := sarama.NewClient(addrs, config())
	m.Must(err, "client")
	defer cl.Close()
	earliest, err := cl.GetOffset(topic, 0, sarama.OffsetOldest)
	m.Must(err, "earliest")
	latest, err := cl.GetOffset(topic, 0, sarama.OffsetNewest)
	m.Must(err, "latest")
	m.Check(earliest == 0 && latest == 20, "earliest/latest %d/%d", earliest, latest)
	at, err := cl.GetOffset(topic, 0, m.BaseTS+7000)
	m.Must(err, "offset for time")
	m.Check(at == 7, "offset for timestamp = %d", at)
	got := read(topic, map[int32]int64{0: 12}, 8)
	var offs []int64
	for _, r := range got {
		offs = append(offs, r.Offset)
	}
	m.Check(fmt.Sprint(offs) == "[12 13 14 15 16 17 18 19]", "from 12: %v", offs)
	return nil
}

// member is one consumer of the group: a goroutine runs Consume in a loop, the handler
// records the partitions of the current session and every value read, and commits each
// record as it is read.
type member struct {
	group  sarama.ConsumerGroup
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	owned  int
	seen   map[string]bool
}

func (mb *member) Setup(s sarama.ConsumerGroupSession) error {
	mb.mu.Lock()
	defer mb.mu.Unlock()
	mb.owned = 0
	for _, ps := range s.Claims() {
		mb.owned += len(ps)
	}
	return nil
}

func (mb *member) Cleanup(sarama.ConsumerGroupSession) error {
	mb.mu.Lock()
	defer mb.mu.Unlock()
	mb.owned = 0
	return nil
}

func (mb *member) ConsumeClaim(s sarama.ConsumerGroupSession, c sarama.ConsumerGroupClaim) error {
	for msg := range c.Messages() {
		mb.mu.Lock()
		mb.seen[string(msg.Value)] = true
		mb.mu.Unlock()
		s.MarkMessage(msg, "")
		s.Commit()
	}
	return nil
}

func (mb *member) state() (int, map[string]bool) {
	mb.mu.Lock()
	defer mb.mu.Unlock()
	cp := map[string]bool{}
	for k := range mb.seen {
		cp[k] = true
	}
	return mb.owned, cp
}

func (mb *member) reset() {
	mb.mu.Lock()
	defer mb.mu.Unlock()
	mb.seen = map[string]bool{}
}

func (mb *member) close() {
	mb.cancel()
	<-mb.done
	m.Must(mb.group.Close(), "close member")
}

func newMember(topic, gid string) *member {
	c := config()
	c.Consumer.Offsets.AutoCommit.Enable = false
	c.Consumer.Offsets.Initial = sarama.OffsetOldest
	c.Consumer.Group.Session.Timeout = 10 * time.Second
	g, err := sarama.NewConsumerGroup(addrs, gid, c)
	m.Must(err, "consumer group")
	ctx, cancel := context.WithCancel(context.Background())
	mb := &member{group: g, cancel: cancel, done: make(chan struct{}), seen: map[string]bool{}}
	go func() {
		defer close(mb.done)
		for ctx.Err() == nil {
			if err := g.Consume(ctx, []string{topic}, mb); err != nil {
				time.Sleep(100 * time.Millisecond)
			}
		}
	}()
	return mb
}

func send(p sarama.SyncProducer, topic, tag string, n int) {
	var msgs []*sarama.ProducerMessage
	for i := 0; i < n; i++ {
		msgs = append(msgs, &sarama.ProducerMessage{Topic: topic, Partition: int32(i % 4), Value: sarama.StringEncoder(fmt.Sprintf("%s%d", tag, i))})
	}
	m.Must(p.SendMessages(msgs), "send")
}

func union(a, b map[string]bool) map[string]bool {
	out := map[string]bool{}
	for k := range a {
		out[k] = true
	}
	for k := range b {
		out[k] = true
	}
	return out
}

func group() error {
	topic := m.Prefix + "-group"
	gid := m.Prefix + "-group"
	create(topic, 4)
	p := producer(sarama.CompressionNone, true)
	defer p.Close()
	a, b := newMember(topic, gid), newMember(topic, gid)
	m.Check(m.Until(60*time.Second, func() bool {
		oa, _ := a.state()
		ob, _ := b.state()
		return oa > 0 && ob > 0 && oa+ob == 4
	}), "both members never had partitions")
	send(p, topic, "g", 40)
	var seen map[string]bool
	m.Until(60*time.Second, func() bool {
		_, sa := a.state()
		_, sb := b.state()
		seen = union(sa, sb)
		return len(seen) >= 40
	})
	m.Check(m.Equal(seen, m.Names("g", 40)), "two members read %d of 40", len(seen))
	a.close()
	var owned int
	m.Until(60*time.Second, func() bool { owned, _ = b.state(); return owned == 4 })
	m.Check(owned == 4, "remaining member has %d partitions", owned)
	b.reset()
	send(p, topic, "h", 20)
	var more map[string]bool
	m.Until(60*time.Second, func() bool { _, more = b.state(); return m.Covers(more, m.Names("h", 20)) })
	m.Check(m.Equal(more, m.Names("h", 20)), "after rebalance read %v", m.Sorted(more))
	b.close()
	send(p, topic, "j", 10)
	c := newMember(topic, gid)
	var last map[string]bool
	m.Until(60*time.Second, func() bool { _, last = c.state(); return len(last) >= 10 })
	time.Sleep(2 * time.Second) // a window in which a re-read of older records would show
	_, last = c.state()
	c.close()
	m.Check(m.Equal(last, m.Names("j", 10)), "resumed member read %v", m.Sorted(last))
	return nil
}

func groupsAdmin() error {
	gid := m.Prefix + "-group"
	groups, err := adm.ListConsumerGroups()
	m.Must(err, "list groups")
	_, ok := groups[gid]
	m.Check(ok, "group not listed")
	ds, err := adm.DescribeConsumerGroups([]string{gid})
	m.Must(err, "describe groups")
	m.Check(len(ds) == 1 && ds[0].State == "Empty" && ds[0].ProtocolType == "consumer", "described %+v", ds)
	offs, err := adm.ListConsumerGroupOffsets(gid, nil)
	m.Must(err, "list offsets")
	n, sum := 0, int64(0)
	for _, ps := range offs.Blocks {
		for _, b := range ps {
			n++
			sum += b.Offset
		}
	}
	m.Check(n == 4 && sum == 70, "committed %d partitions summing to %d", n, sum)
	return nil
}

func main() {
	m.Run("admin", admin)
	m.Run("produce", produce)
	m.Run("compression", compression)
	m.Run("offsets", offsets)
	m.Run("group", group)
	m.Run("groups_admin", groupsAdmin)
}

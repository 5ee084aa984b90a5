// The client matrix's scenarios (compat/clients/SCENARIOS.md) with franz-go (kgo, kadm).
package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	m "keel.dev/compat/clients/go/matrix"
)

var ctx = context.Background()

func client(opts ...kgo.Opt) *kgo.Client {
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(strings.Split(m.Bootstrap, ",")...)}, opts...)...)
	m.Must(err, "new client")
	return cl
}

var adm = kadm.NewClient(client())

func create(topic string, partitions int32) {
	r, err := adm.CreateTopics(ctx, partitions, 1, nil, topic)
	m.Must(err, "create topics")
	m.Must(r[topic].Err, "create "+topic)
	ok := m.Until(30*time.Second, func() bool {
		td, err := adm.ListTopics(ctx, topic)
		if err != nil || td[topic].Err != nil || len(td[topic].Partitions) != int(partitions) {
			return false
		}
		for _, p := range td[topic].Partitions {
			if p.Leader < 0 {
				return false
			}
		}
		return true
	})
	m.Check(ok, "%s never had leaders", topic)
}

func producer(codec kgo.CompressionCodec) *kgo.Client {
	return client(kgo.RequiredAcks(kgo.AllISRAcks()), kgo.ProducerBatchCompression(codec),
		kgo.ProducerLinger(5*time.Millisecond), kgo.RecordPartitioner(kgo.ManualPartitioner()))
}

func keyed() *kgo.Client {
	return client(kgo.RequiredAcks(kgo.AllISRAcks()), kgo.ProducerLinger(5*time.Millisecond))
}

func send(cl *kgo.Client, recs ...*kgo.Record) {
	m.Must(cl.ProduceSync(ctx, recs...).FirstErr(), "produce")
}

func read(topic string, from map[int32]int64, count int) []*kgo.Record {
	offs := map[int32]kgo.Offset{}
	for p, o := range from {
		offs[p] = kgo.NewOffset().At(o)
	}
	cl := client(kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: offs}))
	defer cl.Close()
	var out []*kgo.Record
	deadline := time.Now().Add(30 * time.Second)
	for len(out) < count && time.Now().Before(deadline) {
		c, cancel := context.WithTimeout(ctx, time.Second)
		fs := cl.PollFetches(c)
		cancel()
		fs.EachRecord(func(r *kgo.Record) { out = append(out, r) })
	}
	return out
}

func admin() error {
	topic := m.Prefix + "-admin"
	create(topic, 3)
	td, err := adm.ListTopics(ctx, topic)
	m.Must(err, "describe")
	m.Check(len(td[topic].Partitions) == 3, "%d partitions", len(td[topic].Partitions))
	ar, err := adm.AlterTopicConfigs(ctx, []kadm.AlterConfig{{Op: kadm.SetConfig, Name: "retention.ms", Value: kadm.StringPtr("3600000")}}, topic)
	m.Must(err, "alter configs")
	for _, r := range ar {
		m.Must(r.Err, "alter config")
	}
	// A changed config reaches every broker soon after it is committed, not at once.
	val := ""
	m.Until(15*time.Second, func() bool {
		rc, err := adm.DescribeTopicConfigs(ctx, topic)
		m.Must(err, "describe configs")
		cfg, err := rc.On(topic, nil)
		m.Must(err, "describe config")
		for _, c := range cfg.Configs {
			if c.Key == "retention.ms" {
				val = c.MaybeValue()
			}
		}
		return val == "3600000"
	})
	m.Check(val == "3600000", "retention.ms = %q", val)
	all, err := adm.ListTopics(ctx)
	m.Must(err, "list topics")
	m.Check(all.Has(topic), "not listed")
	dr, err := adm.DeleteTopics(ctx, topic)
	m.Must(err, "delete topics")
	m.Must(dr[topic].Err, "delete")
	m.Check(m.Until(30*time.Second, func() bool {
		all, err := adm.ListTopics(ctx)
		return err == nil && !all.Has(topic)
	}), "still listed after delete")
	return nil
}

func produce() error {
	topic := m.Prefix + "-produce"
	create(topic, 3)
	p := keyed()
	defer p.Close()
	var recs []*kgo.Record
	for i := 0; i < 30; i++ {
		recs = append(recs, &kgo.Record{
			Topic: topic, Key: []byte(fmt.Sprintf("key-%d", i%5)), Value: []byte(fmt.Sprintf("value-%d", i)),
			Headers:   []kgo.RecordHeader{{Key: "h1", Value: []byte(fmt.Sprintf("a%d", i))}, {Key: "h2", Value: []byte("b")}},
			Timestamp: time.UnixMilli(m.BaseTS + int64(i)),
		})
	}
	send(p, recs...)
	got := read(topic, map[int32]int64{0: 0, 1: 0, 2: 0}, 30)
	m.Check(len(got) == 30, "read %d of 30", len(got))
	keyPart := map[string]int32{}
	last := map[string]int{}
	for _, r := range got {
		var i int
		fmt.Sscanf(string(r.Value), "value-%d", &i)
		k := string(r.Key)
		m.Check(k == fmt.Sprintf("key-%d", i%5), "key of %d", i)
		m.Check(len(r.Headers) == 2 && r.Headers[0].Key == "h1" && string(r.Headers[0].Value) == fmt.Sprintf("a%d", i) &&
			r.Headers[1].Key == "h2" && string(r.Headers[1].Value) == "b", "headers of %d", i)
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
	codecs := map[string]kgo.CompressionCodec{
		"none": kgo.NoCompression(), "gzip": kgo.GzipCompression(), "snappy": kgo.SnappyCompression(),
		"lz4": kgo.Lz4Compression(), "zstd": kgo.ZstdCompression(),
	}
	for _, name := range []string{"none", "gzip", "snappy", "lz4", "zstd"} {
		topic := m.Prefix + "-codec-" + name
		create(topic, 1)
		p := producer(codecs[name])
		var recs []*kgo.Record
		var want []string
		for i := 0; i < 10; i++ {
			v := strings.Repeat(fmt.Sprintf("%s-%d-", name, i), 20)
			want = append(want, v)
			recs = append(recs, &kgo.Record{Topic: topic, Partition: 0, Value: []byte(v)})
		}
		send(p, recs...)
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
	p := producer(kgo.NoCompression())
	defer p.Close()
	var recs []*kgo.Record
	for i := 0; i < 20; i++ {
		recs = append(recs, &kgo.Record{Topic: topic, Partition: 0, Value: []byte(fmt.Sprintf("r%d", i)), Timestamp: time.UnixMilli(m.BaseTS + 1000*int64(i))})
	}
	send(p, recs...)
	start, err := adm.ListStartOffsets(ctx, topic)
	m.Must(err, "list start offsets")
	end, err := adm.ListEndOffsets(ctx, topic)
	m.Must(err, "list end offsets")
	s, _ := start.Lookup(topic, 0)
	e, _ := end.Lookup(topic, 0)
	m.Check(s.Offset == 0 && e.Offset == 20, "earliest/latest %d/%d", s.Offset, e.Offset)
	at, err := adm.ListOffsetsAfterMilli(ctx, m.BaseTS+7000, topic)
	m.Must(err, "offsets for time")
	a, _ := at.Lookup(topic, 0)
	m.Check(a.Offset == 7, "offset for timestamp = %d", a.Offset)
	got := read(topic, map[int32]int64{0: 12}, 8)
	var offs []int64
	for _, r := range got {
		offs = append(offs, r.Offset)
	}
	m.Check(fmt.Sprint(offs) == "[12 13 14 15 16 17 18 19]", "from 12: %v", offs)
	return nil
}

// member is a group consumer and the partitions it owns (franz-go's default balancer is
// cooperative-sticky, so assignments arrive and leave incrementally).
type member struct {
	cl    *kgo.Client
	mu    sync.Mutex
	owned map[int32]bool
}

func newMember(topic, gid string) *member {
	mb := &member{owned: map[int32]bool{}}
	update := func(add bool) func(context.Context, *kgo.Client, map[string][]int32) {
		return func(_ context.Context, _ *kgo.Client, ps map[string][]int32) {
			mb.mu.Lock()
			defer mb.mu.Unlock()
			for _, p := range ps[topic] {
				if add {
					mb.owned[p] = true
				} else {
					delete(mb.owned, p)
				}
			}
		}
	}
	mb.cl = client(kgo.ConsumerGroup(gid), kgo.ConsumeTopics(topic), kgo.DisableAutoCommit(),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.SessionTimeout(10*time.Second),
		kgo.OnPartitionsAssigned(update(true)), kgo.OnPartitionsRevoked(update(false)), kgo.OnPartitionsLost(update(false)))
	return mb
}

func (mb *member) owns() int {
	mb.mu.Lock()
	defer mb.mu.Unlock()
	return len(mb.owned)
}

func (mb *member) poll(into map[string]bool) {
	c, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	mb.cl.PollFetches(c).EachRecord(func(r *kgo.Record) {
		if into != nil {
			into[string(r.Value)] = true
		}
	})
}

func batch(topic, tag string, n int) []*kgo.Record {
	var out []*kgo.Record
	for i := 0; i < n; i++ {
		out = append(out, &kgo.Record{Topic: topic, Partition: int32(i % 4), Value: []byte(fmt.Sprintf("%s%d", tag, i))})
	}
	return out
}

func group() error {
	topic := m.Prefix + "-group"
	gid := m.Prefix + "-group"
	create(topic, 4)
	p := producer(kgo.NoCompression())
	defer p.Close()
	a, b := newMember(topic, gid), newMember(topic, gid)
	early := map[string]bool{}
	m.Check(m.Until(60*time.Second, func() bool {
		a.poll(early)
		b.poll(early)
		return a.owns() > 0 && b.owns() > 0 && a.owns()+b.owns() == 4
	}), "assignments %d / %d", a.owns(), b.owns())
	m.Check(len(early) == 0, "a record before any was produced")
	send(p, batch(topic, "g", 40)...)
	seen := map[string]bool{}
	m.Until(60*time.Second, func() bool { a.poll(seen); b.poll(seen); return len(seen) >= 40 })
	m.Check(m.Equal(seen, m.Names("g", 40)), "two members read %d of 40", len(seen))
	m.Must(a.cl.CommitUncommittedOffsets(ctx), "commit a")
	m.Must(b.cl.CommitUncommittedOffsets(ctx), "commit b")
	a.cl.Close()
	stale := map[string]bool{}
	m.Until(60*time.Second, func() bool { b.poll(stale); return b.owns() == 4 })
	m.Check(b.owns() == 4, "remaining member has %d partitions", b.owns())
	m.Check(len(stale) == 0, "the remaining member re-read committed records %v", m.Sorted(stale))
	send(p, batch(topic, "h", 20)...)
	more := map[string]bool{}
	m.Until(60*time.Second, func() bool { b.poll(more); return m.Covers(more, m.Names("h", 20)) })
	m.Check(m.Equal(more, m.Names("h", 20)), "after rebalance read %v", m.Sorted(more))
	m.Must(b.cl.CommitUncommittedOffsets(ctx), "commit b")
	b.cl.Close()
	send(p, batch(topic, "j", 10)...)
	c := newMember(topic, gid)
	defer c.cl.Close()
	var last []string
	m.Until(60*time.Second, func() bool {
		got := map[string]bool{}
		c.poll(got)
		for k := range got {
			last = append(last, k)
		}
		return len(last) >= 10
	})
	extra := map[string]bool{}
	for i := 0; i < 10; i++ {
		c.poll(extra)
	}
	for k := range extra {
		last = append(last, k)
	}
	set := map[string]bool{}
	for _, k := range last {
		set[k] = true
	}
	m.Check(len(last) == 10 && m.Equal(set, m.Names("j", 10)), "resumed member read %v", last)
	m.Must(c.cl.CommitUncommittedOffsets(ctx), "commit c")
	return nil
}

func groupsAdmin() error {
	gid := m.Prefix + "-group"
	lg, err := adm.ListGroups(ctx)
	m.Must(err, "list groups")
	_, ok := lg[gid]
	m.Check(ok, "group not listed")
	dg, err := adm.DescribeGroups(ctx, gid)
	m.Must(err, "describe groups")
	d := dg[gid]
	m.Must(d.Err, "describe group")
	m.Check(d.State == "Empty" && d.ProtocolType == "consumer", "state %q protocol type %q", d.State, d.ProtocolType)
	offs, err := adm.FetchOffsets(ctx, gid)
	m.Must(err, "fetch offsets")
	n, sum := 0, int64(0)
	offs.Each(func(o kadm.OffsetResponse) { n++; sum += o.At })
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

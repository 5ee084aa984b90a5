// The client matrix's scenarios (compat/clients/SCENARIOS.md) with segmentio/kafka-go. It
// has no idempotent producer: `produce` runs with acks=all and says so.
package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/compress"
	m "keel.dev/compat/clients/go/matrix"
)

var (
	ctx    = context.Background()
	addrs  = strings.Split(m.Bootstrap, ",")
	client = &kafka.Client{Addr: kafka.TCP(addrs...), Timeout: 30 * time.Second}
)

func create(topic string, partitions int) {
	r, err := client.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{Topic: topic, NumPartitions: partitions, ReplicationFactor: 1}}})
	m.Must(err, "create topics")
	m.Must(r.Errors[topic], "create "+topic)
	m.Check(m.Until(30*time.Second, func() bool {
		md, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
		if err != nil || len(md.Topics) != 1 || md.Topics[0].Error != nil || len(md.Topics[0].Partitions) != partitions {
			return false
		}
		for _, p := range md.Topics[0].Partitions {
			if p.Leader.ID < 0 || p.Leader.Host == "" {
				return false
			}
		}
		return true
	}), "%s never had leaders", topic)
}

// toPartition sends each message to the partition its key names.
var toPartition = kafka.BalancerFunc(func(msg kafka.Message, partitions ...int) int {
	p, _ := strconv.Atoi(string(msg.Key))
	return p
})

func writer(topic string, codec compress.Compression, b kafka.Balancer) *kafka.Writer {
	return &kafka.Writer{Addr: kafka.TCP(addrs...), Topic: topic, RequiredAcks: kafka.RequireAll, Compression: codec,
		Balancer: b, BatchTimeout: 5 * time.Millisecond}
}

func read(topic string, from map[int]int64, count int) []kafka.Message {
	out := make(chan kafka.Message, count+100)
	c, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for p, o := range from {
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: addrs, Topic: topic, Partition: p, MaxWait: 200 * time.Millisecond})
		m.Must(r.SetOffset(o), "set offset")
		go func() {
			defer r.Close()
			for {
				msg, err := r.ReadMessage(c)
				if err != nil {
					return
				}
				out <- msg
			}
		}()
	}
	var got []kafka.Message
	for len(got) < count {
		select {
		case msg := <-out:
			got = append(got, msg)
		case <-c.Done():
			return got
		}
	}
	return got
}

func admin() error {
	topic := m.Prefix + "-admin"
	create(topic, 3)
	md, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	m.Must(err, "describe")
	m.Check(len(md.Topics[0].Partitions) == 3, "%d partitions", len(md.Topics[0].Partitions))
	ar, err := client.IncrementalAlterConfigs(ctx, &kafka.IncrementalAlterConfigsRequest{Resources: []kafka.IncrementalAlterConfigsRequestResource{{
		ResourceType: kafka.ResourceTypeTopic, ResourceName: topic,
		Configs: []kafka.IncrementalAlterConfigsRequestConfig{{Name: "retention.ms", Value: "3600000", ConfigOperation: kafka.ConfigOperationSet}}}}})
	m.Must(err, "alter configs")
	for _, r := range ar.Resources {
		m.Must(r.Error, "alter config")
	}
	// A changed config reaches every broker soon after it is committed, not at once.
	val := ""
	m.Until(15*time.Second, func() bool {
		dr, err := client.DescribeConfigs(ctx, &kafka.DescribeConfigsRequest{Resources: []kafka.DescribeConfigRequestResource{{
			ResourceType: kafka.ResourceTypeTopic, ResourceName: topic, ConfigNames: []string{"retention.ms"}}}})
		m.Must(err, "describe configs")
		for _, e := range dr.Resources[0].ConfigEntries {
			if e.ConfigName == "retention.ms" {
				val = e.ConfigValue
			}
		}
		return val == "3600000"
	})
	m.Check(val == "3600000", "retention.ms = %q", val)
	listed := func() bool {
		md, err := client.Metadata(ctx, &kafka.MetadataRequest{})
		m.Must(err, "list topics")
		for _, t := range md.Topics {
			if t.Name == topic {
				return true
			}
		}
		return false
	}
	m.Check(listed(), "not listed")
	del, err := client.DeleteTopics(ctx, &kafka.DeleteTopicsRequest{Topics: []string{topic}})
	m.Must(err, "delete topics")
	m.Must(del.Errors[topic], "delete")
	m.Check(m.Until(30*time.Second, func() bool { return !listed() }), "still listed after delete")
	return nil
}

func produce() error {
	topic := m.Prefix + "-produce"
	create(topic, 3)
	w := writer(topic, 0, &kafka.Murmur2Balancer{})
	defer w.Close()
	var msgs []kafka.Message
	for i := 0; i < 30; i++ {
		msgs = append(msgs, kafka.Message{
			Key: []byte(fmt.Sprintf("key-%d", i%5)), Value: []byte(fmt.Sprintf("value-%d", i)),
			Headers: []kafka.Header{{Key: "h1", Value: []byte(fmt.Sprintf("a%d", i))}, {Key: "h2", Value: []byte("b")}},
			Time:    time.UnixMilli(m.BaseTS + int64(i)),
		})
	}
	m.Must(w.WriteMessages(ctx, msgs...), "write")
	got := read(topic, map[int]int64{0: 0, 1: 0, 2: 0}, 30)
	m.Check(len(got) == 30, "read %d of 30", len(got))
	keyPart := map[string]int{}
	last := map[string]int{}
	for _, r := range got {
		var i int
		fmt.Sscanf(string(r.Value), "value-%d", &i)
		k := string(r.Key)
		m.Check(k == fmt.Sprintf("key-%d", i%5), "key of %d", i)
		m.Check(len(r.Headers) == 2 && r.Headers[0].Key == "h1" && string(r.Headers[0].Value) == fmt.Sprintf("a%d", i) &&
			r.Headers[1].Key == "h2" && string(r.Headers[1].Value) == "b", "headers of %d", i)
		m.Check(r.Time.UnixMilli() == m.BaseTS+int64(i), "timestamp of %d: %d", i, r.Time.UnixMilli())
		if p, ok := keyPart[k]; ok {
			m.Check(p == r.Partition, "key %s in two partitions", k)
		}
		keyPart[k] = r.Partition
		if l, ok := last[k]; ok {
			m.Check(l < i, "key %s out of order", k)
		}
		last[k] = i
	}
	return m.Unsupported("acks=all, keys, headers and timestamps pass; kafka-go has no idempotent producer")
}

func compression() error {
	codecs := map[string]compress.Compression{"none": 0, "gzip": kafka.Gzip, "snappy": kafka.Snappy, "lz4": kafka.Lz4, "zstd": kafka.Zstd}
	for _, name := range []string{"none", "gzip", "snappy", "lz4", "zstd"} {
		topic := m.Prefix + "-codec-" + name
		create(topic, 1)
		w := writer(topic, codecs[name], toPartition)
		var msgs []kafka.Message
		var want []string
		for i := 0; i < 10; i++ {
			v := strings.Repeat(fmt.Sprintf("%s-%d-", name, i), 20)
			want = append(want, v)
			msgs = append(msgs, kafka.Message{Key: []byte("0"), Value: []byte(v)})
		}
		m.Must(w.WriteMessages(ctx, msgs...), name+": write")
		w.Close()
		got := read(topic, map[int]int64{0: 0}, 10)
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
	w := writer(topic, 0, toPartition)
	defer w.Close()
	var msgs []kafka.Message
	for i := 0; i < 20; i++ {
		msgs = append(msgs, kafka.Message{Key: []byte("0"), Value: []byte(fmt.Sprintf("r%d", i)), Time: time.UnixMilli(m.BaseTS + 1000*int64(i))})
	}
	m.Must(w.WriteMessages(ctx, msgs...), "write")
	lo, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{
		topic: {kafka.FirstOffsetOf(0), kafka.LastOffsetOf(0)}}})
	m.Must(err, "list offsets")
	po := lo.Topics[topic][0]
	m.Must(po.Error, "list offsets")
	m.Check(po.FirstOffset == 0 && po.LastOffset == 20, "earliest/latest %d/%d", po.FirstOffset, po.LastOffset)
	at, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{
		topic: {kafka.TimeOffsetOf(0, time.UnixMilli(m.BaseTS+7000))}}})
	m.Must(err, "offset for time")
	var found []int64
	for o := range at.Topics[topic][0].Offsets {
		found = append(found, o)
	}
	m.Check(len(found) == 1 && found[0] == 7, "offset for timestamp = %v", found)
	got := read(topic, map[int]int64{0: 12}, 8)
	var offs []int64
	for _, r := range got {
		offs = append(offs, r.Offset)
	}
	m.Check(fmt.Sprint(offs) == "[12 13 14 15 16 17 18 19]", "from 12: %v", offs)
	return nil
}

// member reads the group's records in a goroutine, committing each; kafka-go does not
// expose a reader's assignment, so it is read from DescribeGroups.
type member struct {
	r      *kafka.Reader
	values chan string
	cancel context.CancelFunc
	done   chan struct{}
}

func newMember(topic, gid string) *member {
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: addrs, GroupID: gid, Topic: topic, StartOffset: kafka.FirstOffset,
		MaxWait: 200 * time.Millisecond, SessionTimeout: 10 * time.Second, HeartbeatInterval: time.Second,
		RebalanceTimeout: 10 * time.Second, JoinGroupBackoff: 500 * time.Millisecond})
	c, cancel := context.WithCancel(ctx)
	mb := &member{r: r, values: make(chan string, 1000), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(mb.done)
		for {
			msg, err := r.FetchMessage(c)
			if err != nil {
				return
			}
			mb.values <- string(msg.Value)
			if r.CommitMessages(c, msg) != nil {
				return
			}
		}
	}()
	return mb
}

func (mb *member) close() {
	mb.cancel()
	<-mb.done
	m.Must(mb.r.Close(), "close reader")
}

func (mb *member) drain(into map[string]bool) {
	for {
		select {
		case v := <-mb.values:
			into[v] = true
		default:
			return
		}
	}
}

// assignment: partitions per member of the group, as the coordinator describes it.
func assignment(gid string) []int {
	d, err := client.DescribeGroups(ctx, &kafka.DescribeGroupsRequest{GroupIDs: []string{gid}})
	if err != nil || len(d.Groups) != 1 || d.Groups[0].GroupState != "Stable" {
		return nil
	}
	var out []int
	for _, mem := range d.Groups[0].Members {
		n := 0
		for _, t := range mem.MemberAssignments.Topics {
			n += len(t.Partitions)
		}
		out = append(out, n)
	}
	return out
}

func send(w *kafka.Writer, tag string, n int) {
	var msgs []kafka.Message
	for i := 0; i < n; i++ {
		msgs = append(msgs, kafka.Message{Key: []byte(strconv.Itoa(i % 4)), Value: []byte(fmt.Sprintf("%s%d", tag, i))})
	}
	m.Must(w.WriteMessages(ctx, msgs...), "write")
}

func group() error {
	topic := m.Prefix + "-group"
	gid := m.Prefix + "-group"
	create(topic, 4)
	w := writer(topic, 0, toPartition)
	defer w.Close()
	a, b := newMember(topic, gid), newMember(topic, gid)
	var as []int
	m.Check(m.Until(60*time.Second, func() bool {
		as = assignment(gid)
		return len(as) == 2 && as[0] > 0 && as[1] > 0 && as[0]+as[1] == 4
	}), "assignments %v", as)
	send(w, "g", 40)
	seen := map[string]bool{}
	m.Until(60*time.Second, func() bool { a.drain(seen); b.drain(seen); return len(seen) >= 40 })
	m.Check(m.Equal(seen, m.Names("g", 40)), "two members read %d of 40", len(seen))
	a.close()
	stale := map[string]bool{}
	m.Until(60*time.Second, func() bool { b.drain(stale); as = assignment(gid); return len(as) == 1 && as[0] == 4 })
	m.Check(len(as) == 1 && as[0] == 4, "remaining member's assignment %v", as)
	m.Check(len(stale) == 0, "the remaining member re-read committed records %v", m.Sorted(stale))
	send(w, "h", 20)
	more := map[string]bool{}
	m.Until(60*time.Second, func() bool { b.drain(more); return m.Covers(more, m.Names("h", 20)) })
	m.Check(m.Equal(more, m.Names("h", 20)), "after rebalance read %v", m.Sorted(more))
	b.close()
	send(w, "j", 10)
	c := newMember(topic, gid)
	last := map[string]bool{}
	m.Until(60*time.Second, func() bool { c.drain(last); return len(last) >= 10 })
	time.Sleep(2 * time.Second) // a window in which a re-read of older records would show
	c.drain(last)
	c.close()
	m.Check(m.Equal(last, m.Names("j", 10)), "resumed member read %v", m.Sorted(last))
	return nil
}

func groupsAdmin() error {
	gid := m.Prefix + "-group"
	topic := m.Prefix + "-group"
	lg, err := client.ListGroups(ctx, &kafka.ListGroupsRequest{})
	m.Must(err, "list groups")
	found := false
	for _, g := range lg.Groups {
		found = found || g.GroupID == gid
	}
	m.Check(found, "group not listed")
	d, err := client.DescribeGroups(ctx, &kafka.DescribeGroupsRequest{GroupIDs: []string{gid}})
	m.Must(err, "describe groups")
	m.Check(len(d.Groups) == 1 && d.Groups[0].GroupState == "Empty", "described %+v", d.Groups)
	of, err := client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: gid, Topics: map[string][]int{topic: {0, 1, 2, 3}}})
	m.Must(err, "offset fetch")
	n, sum := 0, int64(0)
	for _, p := range of.Topics[topic] {
		m.Must(p.Error, "offset fetch")
		n++
		sum += p.CommittedOffset
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

// Command check renders Keel's Helm chart with Helm's own engine (what `helm template`
// does) for several sets of values, and validates every rendered object against the
// Kubernetes API types (and prometheus-operator's): each document is decoded strictly
// into its Go type, so a misspelt or misplaced field, a wrong type or an unknown kind
// fails. It then checks what ties the objects together (the StatefulSet's service, the
// probes' paths and ports, the PodDisruptionBudget's selector) and, with -write, writes
// the plain manifests rendered from the chart to deploy/kubernetes/keel.yaml; without
// it, fails if that file differs from a fresh rendering.
//
//	go run . -chart ../keel [-write]
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"
)

type object struct {
	file string
	kind string
	name string
	body any
}

// The value sets rendered; "plain" is the one written to deploy/kubernetes/keel.yaml.
var cases = []struct {
	name   string
	values string
}{
	{"defaults", ``},
	{"plain", `
clusterSecret: {existingSecret: keel-cluster-secret}
monitoring: {grafanaDashboard: {enabled: false}}
image: {tag: "0.1.0"}
`},
	{"everything", `
replicas: 5
rack: {fromNodeLabel: true}
tls: {enabled: true, secretName: keel-tls, clientAuth: required, http: true}
antiAffinity: {hostname: required, zone: required}
config: {default_partitions: 6, retention_check_ms: 30000, auto_create_topics: false, super_users: ["User:admin"]}
clusterSecret: {value: a cluster secret of enough bytes}
monitoring:
  serviceMonitor: {enabled: true, labels: {release: prometheus}}
  prometheusRule: {enabled: true}
persistence: {storageClassName: fast-ssd, size: 100Gi}
`},
	{"no-affinity-no-pdb", `
antiAffinity: {hostname: none, zone: none}
podDisruptionBudget: {enabled: false}
serviceAccount: {create: false}
`},
}

func render(ch *chart.Chart, text string) (map[string]string, error) {
	values, err := chartutil.ReadValues([]byte(text))
	if err != nil {
		return nil, err
	}
	opts := chartutil.ReleaseOptions{Name: "keel", Namespace: "streaming", Revision: 1, IsInstall: true}
	vals, err := chartutil.ToRenderValues(ch, values, opts, chartutil.DefaultCapabilities)
	if err != nil {
		return nil, err
	}
	return engine.Render(ch, vals)
}

// decode splits a rendered file into documents and decodes each strictly by its kind.
func decode(file, text string) ([]object, error) {
	var out []object
	for _, doc := range strings.Split(text, "\n---") {
		if strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		var head struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Metadata   struct {
				Name string `json:"name"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
		var body any
		switch head.APIVersion + " " + head.Kind {
		case "apps/v1 StatefulSet":
			body = &appsv1.StatefulSet{}
		case "v1 Service":
			body = &corev1.Service{}
		case "v1 ConfigMap":
			body = &corev1.ConfigMap{}
		case "v1 Secret":
			body = &corev1.Secret{}
		case "v1 ServiceAccount":
			body = &corev1.ServiceAccount{}
		case "policy/v1 PodDisruptionBudget":
			body = &policyv1.PodDisruptionBudget{}
		case "rbac.authorization.k8s.io/v1 ClusterRole":
			body = &rbacv1.ClusterRole{}
		case "rbac.authorization.k8s.io/v1 ClusterRoleBinding":
			body = &rbacv1.ClusterRoleBinding{}
		case "monitoring.coreos.com/v1 ServiceMonitor":
			body = &monitoringv1.ServiceMonitor{}
		case "monitoring.coreos.com/v1 PrometheusRule":
			body = &monitoringv1.PrometheusRule{}
		default:
			return nil, fmt.Errorf("%s: unexpected kind %q %q", file, head.APIVersion, head.Kind)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), body); err != nil {
			return nil, fmt.Errorf("%s: %s %s: %w", file, head.Kind, head.Metadata.Name, err)
		}
		for _, msg := range validation.IsDNS1123Subdomain(head.Metadata.Name) {
			return nil, fmt.Errorf("%s: %s name %q: %s", file, head.Kind, head.Metadata.Name, msg)
		}
		out = append(out, object{file, head.Kind, head.Metadata.Name, body})
	}
	return out, nil
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// check ties the objects together.
func check(objs []object) error {
	var sts *appsv1.StatefulSet
	services := map[string]*corev1.Service{}
	var pdbs []*policyv1.PodDisruptionBudget
	var monitors []*monitoringv1.ServiceMonitor
	roles := map[string]*rbacv1.ClusterRole{}
	var bindings []*rbacv1.ClusterRoleBinding
	for _, o := range objs {
		switch b := o.body.(type) {
		case *appsv1.StatefulSet:
			sts = b
		case *corev1.Service:
			services[b.Name] = b
		case *corev1.ConfigMap:
			for _, line := range strings.Split(b.Data["keel.toml"], "\n") {
				if k, v, ok := strings.Cut(line, " = "); ok && strings.HasSuffix(v, ".0") {
					return fmt.Errorf("keel.toml sets %s to %s: Keel's settings are integers", k, v)
				}
			}
		case *policyv1.PodDisruptionBudget:
			pdbs = append(pdbs, b)
		case *monitoringv1.ServiceMonitor:
			monitors = append(monitors, b)
		case *rbacv1.ClusterRole:
			roles[b.Name] = b
		case *rbacv1.ClusterRoleBinding:
			bindings = append(bindings, b)
		case *monitoringv1.PrometheusRule:
			if len(b.Spec.Groups) < 2 {
				return fmt.Errorf("PrometheusRule %s has %d groups", b.Name, len(b.Spec.Groups))
			}
			for _, g := range b.Spec.Groups {
				for _, r := range g.Rules {
					if r.Expr.String() == "" || (r.Alert == "" && r.Record == "") {
						return fmt.Errorf("rule %+v in %s is incomplete", r, g.Name)
					}
				}
			}
		}
	}
	if sts == nil {
		return fmt.Errorf("no StatefulSet rendered")
	}
	headless, ok := services[sts.Spec.ServiceName]
	if !ok || headless.Spec.ClusterIP != "None" || !headless.Spec.PublishNotReadyAddresses {
		return fmt.Errorf("the StatefulSet's service %q is not a headless service publishing not-ready pods", sts.Spec.ServiceName)
	}
	if sts.Spec.PodManagementPolicy != appsv1.ParallelPodManagement {
		return fmt.Errorf("pods must start in parallel (each waits for a controller quorum)")
	}
	podLabels := labels.Set(sts.Spec.Template.Labels)
	sel := labels.SelectorFromSet(sts.Spec.Selector.MatchLabels)
	if !sel.Matches(podLabels) {
		return fmt.Errorf("the StatefulSet's selector does not match its pods")
	}
	for _, s := range services {
		if !labels.SelectorFromSet(s.Spec.Selector).Matches(podLabels) {
			return fmt.Errorf("service %s selects no Keel pod", s.Name)
		}
	}
	for _, p := range pdbs {
		if !labels.SelectorFromSet(p.Spec.Selector.MatchLabels).Matches(podLabels) {
			return fmt.Errorf("PodDisruptionBudget %s selects no Keel pod", p.Name)
		}
	}
	for _, m := range monitors {
		n := 0
		for _, s := range services {
			if labels.SelectorFromSet(m.Spec.Selector.MatchLabels).Matches(labels.Set(s.Labels)) {
				n++
			}
		}
		if n != 1 {
			return fmt.Errorf("ServiceMonitor %s selects %d services, not one (each pod would be scraped twice)", m.Name, n)
		}
	}
	c := sts.Spec.Template.Spec.Containers[0]
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	for name, probe := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe, "startup": c.StartupProbe} {
		if probe == nil || probe.HTTPGet == nil {
			return fmt.Errorf("no HTTP %s probe", name)
		}
		if _, ok := ports[probe.HTTPGet.Port.String()]; !ok {
			return fmt.Errorf("the %s probe's port %s is not a container port", name, probe.HTTPGet.Port.String())
		}
	}
	if c.ReadinessProbe.HTTPGet.Path != "/health/ready" || c.LivenessProbe.HTTPGet.Path != "/health/live" {
		return fmt.Errorf("probes must ask /health/ready and /health/live")
	}
	env := map[string]string{}
	for _, e := range c.Env {
		env[e.Name] = e.Value
	}
	// The first controller voters are the first pods; the others join the cluster.
	peers := strings.Split(env["KEEL_PEERS"], ",")
	if len(peers) == 0 || int32(len(peers)) > *sts.Spec.Replicas {
		return fmt.Errorf("KEEL_PEERS names %d nodes for %d replicas", len(peers), *sts.Spec.Replicas)
	}
	script := strings.Join(c.Args, "\n")
	if want := fmt.Sprintf(`[ "$ordinal" -ge %d ] && join="--join"`, len(peers)); !strings.Contains(script, want) {
		return fmt.Errorf("pods beyond the %d voters do not join: the script lacks %s", len(peers), want)
	}
	// The rack init container's API access: get nodes, for the pods' service account only.
	for _, b := range bindings {
		role, ok := roles[b.RoleRef.Name]
		if !ok || b.RoleRef.Kind != "ClusterRole" {
			return fmt.Errorf("ClusterRoleBinding %s refers to no rendered ClusterRole", b.Name)
		}
		for _, r := range role.Rules {
			if strings.Join(r.Resources, ",") != "nodes" || strings.Join(r.Verbs, ",") != "get" {
				return fmt.Errorf("ClusterRole %s allows more than getting nodes: %+v", role.Name, r)
			}
		}
		if len(b.Subjects) != 1 || b.Subjects[0].Name != sts.Spec.Template.Spec.ServiceAccountName {
			return fmt.Errorf("ClusterRoleBinding %s is not for the pods' service account", b.Name)
		}
	}
	inits := sts.Spec.Template.Spec.InitContainers
	if (len(bindings) > 0) != (len(inits) == 1 && inits[0].Name == "rack") {
		return fmt.Errorf("a rack init container needs its ClusterRoleBinding, and only it")
	}
	for i, p := range peers {
		want := fmt.Sprintf("%d@%s-%d.%s.", i+1, sts.Name, i, headless.Name)
		if !strings.HasPrefix(p, want) {
			return fmt.Errorf("peer %q is not %s...", p, want)
		}
	}
	if sts.Spec.Template.Spec.TerminationGracePeriodSeconds == nil || *sts.Spec.Template.Spec.TerminationGracePeriodSeconds < 30 {
		return fmt.Errorf("the grace period leaves no time for the leadership handover")
	}
	return nil
}

func main() {
	chartDir := flag.String("chart", "../keel", "the chart's directory")
	write := flag.Bool("write", false, "write deploy/kubernetes/keel.yaml instead of comparing")
	flag.Parse()
	ch, err := loader.Load(*chartDir)
	if err != nil {
		fail("loading the chart: %v", err)
	}
	for _, c := range cases {
		files, err := render(ch, c.values)
		if err != nil {
			fail("%s: rendering: %v", c.name, err)
		}
		names := make([]string, 0, len(files))
		for f := range files {
			names = append(names, f)
		}
		sort.Strings(names)
		var objs []object
		var plain bytes.Buffer
		for _, f := range names {
			if !strings.HasSuffix(f, ".yaml") || strings.TrimSpace(stripComments(files[f])) == "" {
				continue
			}
			o, err := decode(f, files[f])
			if err != nil {
				fail("%s: %v", c.name, err)
			}
			objs = append(objs, o...)
			fmt.Fprintf(&plain, "---\n# Source: %s\n%s\n", f, strings.TrimSpace(files[f]))
		}
		if err := check(objs); err != nil {
			fail("%s: %v", c.name, err)
		}
		kinds := map[string]int{}
		for _, o := range objs {
			kinds[o.kind]++
		}
		fmt.Printf("%-20s %d objects valid %v\n", c.name, len(objs), kinds)
		if c.name == "plain" {
			out := filepath.Join(*chartDir, "..", "..", "kubernetes", "keel.yaml")
			header := "# Keel on Kubernetes without Helm: deploy/helm/keel rendered with release \"keel\" in\n" +
				"# namespace \"streaming\", the cluster secret taken from the Secret keel-cluster-secret:\n" +
				"#   kubectl create namespace streaming\n" +
				"#   kubectl -n streaming create secret generic keel-cluster-secret --from-literal=cluster-secret=\"$(openssl rand -hex 24)\"\n" +
				"#   kubectl -n streaming apply -f deploy/kubernetes/keel.yaml\n" +
				"# Regenerate with: cd deploy/helm/check && go run . -write\n"
			want := header + plain.String()
			if *write {
				if err := os.WriteFile(out, []byte(want), 0o644); err != nil {
					fail("%v", err)
				}
				fmt.Printf("wrote %s\n", out)
			} else if got, err := os.ReadFile(out); err != nil || string(got) != want {
				fail("%s is not the chart's rendering: run `cd deploy/helm/check && go run . -write`", out)
			}
		}
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "chart check: "+format+"\n", args...)
	os.Exit(1)
}

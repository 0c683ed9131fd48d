// Command finapp-podsecurity checks rendered Kubernetes manifests against a
// Pod Security Standard with the code the API server's Pod Security Admission
// runs (k8s.io/pod-security-admission), so "restricted" means what a cluster
// enforcing it would admit, not a hand-kept list of fields.
//
// Usage: kubectl kustomize infra/k8s/overlays/prod | finapp-podsecurity [-level restricted]
//
// Every pod template (Deployment, StatefulSet, DaemonSet, Job, CronJob, Pod)
// is evaluated at the given level and the latest version; one line per
// workload, and exit status 1 if any is refused or the input holds none.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"
	"sigs.k8s.io/yaml"
)

type workload struct {
	id   string
	meta *metav1.ObjectMeta
	spec *corev1.PodSpec
}

func podOf(doc []byte) (*workload, error) {
	var head metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &head); err != nil {
		return nil, err
	}
	decode := func(into any) error { return yaml.UnmarshalStrict(doc, into) }
	switch head.Kind {
	case "Deployment":
		var o appsv1.Deployment
		if err := decode(&o); err != nil {
			return nil, err
		}
		return &workload{"Deployment/" + o.Name, &o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec}, nil
	case "StatefulSet":
		var o appsv1.StatefulSet
		if err := decode(&o); err != nil {
			return nil, err
		}
		return &workload{"StatefulSet/" + o.Name, &o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec}, nil
	case "DaemonSet":
		var o appsv1.DaemonSet
		if err := decode(&o); err != nil {
			return nil, err
		}
		return &workload{"DaemonSet/" + o.Name, &o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec}, nil
	case "Job":
		var o batchv1.Job
		if err := decode(&o); err != nil {
			return nil, err
		}
		return &workload{"Job/" + o.Name, &o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec}, nil
	case "CronJob":
		var o batchv1.CronJob
		if err := decode(&o); err != nil {
			return nil, err
		}
		t := &o.Spec.JobTemplate.Spec.Template
		return &workload{"CronJob/" + o.Name, &t.ObjectMeta, &t.Spec}, nil
	case "Pod":
		var o corev1.Pod
		if err := decode(&o); err != nil {
			return nil, err
		}
		return &workload{"Pod/" + o.Name, &o.ObjectMeta, &o.Spec}, nil
	}
	return nil, nil
}

func main() {
	levelName := flag.String("level", "restricted", "Pod Security Standard: privileged, baseline or restricted")
	flag.Parse()
	level, err := api.ParseLevel(*levelName)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	evaluator, err := policy.NewEvaluator(policy.DefaultChecks(), nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	at := api.LevelVersion{Level: level, Version: api.LatestVersion()}

	reader := utilyaml.NewYAMLReader(bufio.NewReader(os.Stdin))
	checked, refused := 0, 0
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "reading YAML:", err)
			os.Exit(2)
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		w, err := podOf(doc)
		if err != nil {
			fmt.Fprintln(os.Stderr, "decoding:", err)
			os.Exit(2)
		}
		if w == nil {
			continue
		}
		checked++
		result := policy.AggregateCheckResults(evaluator.EvaluatePod(at, w.meta, w.spec))
		if result.Allowed {
			fmt.Printf("  ok    %s: Pod Security %q\n", w.id, at.String())
		} else {
			refused++
			fmt.Printf("  FAIL  %s: Pod Security %q: %s\n", w.id, at.String(), result.ForbiddenDetail())
		}
	}
	if checked == 0 {
		fmt.Println("  FAIL  no workload in the input")
		os.Exit(1)
	}
	fmt.Printf("pod security: %d workloads, %d refused\n", checked, refused)
	if refused > 0 {
		os.Exit(1)
	}
}

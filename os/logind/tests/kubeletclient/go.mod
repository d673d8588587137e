module cairn.local/test/kubeletclient

go 1.26.0

require k8s.io/kubernetes v1.36.3

require (
	github.com/go-logr/logr v1.4.3 // indirect
	github.com/godbus/dbus/v5 v5.2.2 // indirect
	golang.org/x/sys v0.40.0 // indirect
	k8s.io/klog/v2 v2.140.0 // indirect
)

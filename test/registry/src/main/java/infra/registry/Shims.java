package infra.registry;

import java.util.ArrayList;

import javax.enterprise.inject.Produces;
import javax.inject.Singleton;

import io.apicurio.common.apps.config.DynamicConfigPropertyList;

/*
 * The index of settings editable at run time, which the Quarkus extension
 * left out of pom.xml would build: empty (the test edits none).
 */
public class Shims {
	@Produces
	@Singleton
	public DynamicConfigPropertyList dynamicConfigProperties() {
		return new DynamicConfigPropertyList(new ArrayList<>());
	}
}

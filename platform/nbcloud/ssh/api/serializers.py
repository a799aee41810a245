from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import serializers

from nbcloud.ssh import keys
from nbcloud.ssh.models import SshKey


class SshKeySerializer(serializers.ModelSerializer):
    class Meta:
        model = SshKey
        fields = ["id", "name", "public_key", "fingerprint", "created_at", "last_used_at"]
        read_only_fields = ["id", "fingerprint", "created_at", "last_used_at"]

    def validate_public_key(self, value: str) -> str:
        try:
            parsed = keys.parse(value)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages) from None
        self.context["fingerprint"] = keys.fingerprint(parsed)
        return value.strip()

    def validate(self, attrs):
        user = self.context["request"].user
        taken = SshKey.objects.filter(user=user)
        if taken.filter(fingerprint=self.context["fingerprint"]).exists():
            raise serializers.ValidationError({"public_key": "this key is on your account already"})
        if taken.filter(name=attrs["name"]).exists():
            raise serializers.ValidationError(
                {"name": f"you have a key named {attrs['name']!r} already; choose another name"}
            )
        return {**attrs, "fingerprint": self.context["fingerprint"], "user": user}


class ExecSerializer(serializers.Serializer):
    command = serializers.ListField(
        child=serializers.CharField(trim_whitespace=False),
        min_length=1,
        help_text='The program and its arguments, e.g. ["python", "-c", "print(1)"].',
    )
    timeout = serializers.IntegerField(min_value=1, max_value=3600, default=600)
